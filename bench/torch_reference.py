#!/usr/bin/python3
"""A straightforward PyTorch eager implementation of fedmoe's model and training step, as a
baseline for bench/train_step (which runs it in the same invocation).

The model is Mixtral as Hugging Face's modeling_mixtral writes it (RMSNorm, rotate-half RoPE,
grouped KV heads, softmax → top-k → renormalised routing, a loop over experts that each run on
the tokens routed to them, SwiGLU experts), trained the way fedmoe trains by default: routed
experts and routers trainable, next-token cross-entropy plus the Switch balance loss, AdamW.

Prints one JSON line: {"benchmark": "torch_train_step", "config": ..., "tokens_per_second": ...}.
Needs Debian's python3-torch (run with /usr/bin/python3).
"""
import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

CONFIGS = {
    "tiny": dict(hidden=64, layers=2, heads=4, kv_heads=2, experts=8, top_k=2, inner=128),
    "small": dict(hidden=512, layers=4, heads=8, kv_heads=4, experts=8, top_k=2, inner=1408),
}
VOCAB = 258


class RmsNorm(torch.nn.Module):
    def __init__(self, width, eps=1e-5):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.heads, self.kv_heads = c["heads"], c["kv_heads"]
        self.head_dim = c["hidden"] // c["heads"]
        self.q_proj = torch.nn.Linear(c["hidden"], self.heads * self.head_dim, bias=False)
        self.k_proj = torch.nn.Linear(c["hidden"], self.kv_heads * self.head_dim, bias=False)
        self.v_proj = torch.nn.Linear(c["hidden"], self.kv_heads * self.head_dim, bias=False)
        self.o_proj = torch.nn.Linear(self.heads * self.head_dim, c["hidden"], bias=False)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        repeat = self.heads // self.kv_heads
        k = k.repeat_interleave(repeat, dim=1)
        v = v.repeat_interleave(repeat, dim=1)
        scores = q @ k.transpose(2, 3) / math.sqrt(self.head_dim)
        mask = torch.full((t, t), float("-inf")).triu(1)
        out = torch.softmax(scores + mask, dim=-1) @ v
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class Expert(torch.nn.Module):
    def __init__(self, hidden, inner):
        super().__init__()
        self.w1 = torch.nn.Linear(hidden, inner, bias=False)
        self.w2 = torch.nn.Linear(inner, hidden, bias=False)
        self.w3 = torch.nn.Linear(hidden, inner, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class SparseMoe(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.top_k, self.experts_count = c["top_k"], c["experts"]
        self.gate = torch.nn.Linear(c["hidden"], c["experts"], bias=False)
        self.experts = torch.nn.ModuleList(Expert(c["hidden"], c["inner"])
                                           for _ in range(c["experts"]))

    def forward(self, x):
        b, t, h = x.shape
        x = x.view(-1, h)
        logits = self.gate(x)
        probs = F.softmax(logits, dim=1, dtype=torch.float)
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(x)
        mask = F.one_hot(chosen, num_classes=self.experts_count).permute(2, 1, 0)
        for e in range(self.experts_count):
            slot, token = torch.where(mask[e])
            if token.numel() == 0:
                continue
            y = self.experts[e](x[token]) * weights[token, slot, None]
            out.index_add_(0, token, y)
        counts = mask.sum(dim=(1, 2)).float()
        balance = (self.experts_count / (self.top_k * x.shape[0]) * counts * probs.mean(0)).sum()
        return out.view(b, t, h), balance


class Layer(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.input_layernorm = RmsNorm(c["hidden"])
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RmsNorm(c["hidden"])
        self.block_sparse_moe = SparseMoe(c)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        moe, balance = self.block_sparse_moe(self.post_attention_layernorm(x))
        return x + moe, balance


class Model(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(VOCAB, c["hidden"])
        self.layers = torch.nn.ModuleList(Layer(c) for _ in range(c["layers"]))
        self.norm = RmsNorm(c["hidden"])
        self.lm_head = torch.nn.Linear(c["hidden"], VOCAB, bias=False)
        self.head_dim = c["hidden"] // c["heads"]
        for p in self.parameters():
            if p.dim() > 1:
                torch.nn.init.normal_(p, std=0.02)

    def forward(self, tokens):
        t = tokens.shape[1]
        inverse = 1e6 ** (-torch.arange(0, self.head_dim, 2).float() / self.head_dim)
        angles = torch.outer(torch.arange(t).float(), inverse)
        angles = torch.cat((angles, angles), dim=-1)
        cos, sin = angles.cos(), angles.sin()
        x = self.embed_tokens(tokens)
        balance = 0.0
        for layer in self.layers:
            x, layer_balance = layer(x, cos, sin)
            balance = balance + layer_balance
        return self.lm_head(self.norm(x)), balance / len(self.layers)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", choices=sorted(CONFIGS), default="small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--bf16-autocast", action="store_true",
                        help="run the forward pass under torch.autocast(bfloat16), PyTorch's "
                             "mixed precision: matrix products in bf16, master weights fp32")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Model(CONFIGS[args.config])
    trainable = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad = ".experts." in name or ".gate." in name
        if parameter.requires_grad:
            trainable.append(parameter)
    optimizer = torch.optim.AdamW(trainable, lr=1e-3, weight_decay=0.01)
    tokens = torch.randint(0, 256, (args.batch, args.seq_len + 1))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16_autocast):
            logits, balance = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
        (loss + 0.02 * balance).backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = time.perf_counter() - start
    print(json.dumps({
        "benchmark": "torch_train_step", "config": args.config, "batch": args.batch,
        "seq_len": args.seq_len, "steps": args.steps, "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__, "precision": "bf16 autocast" if args.bf16_autocast
        else "fp32", "seconds_per_step": seconds / args.steps,
        "tokens_per_second": args.batch * args.seq_len * args.steps / seconds}))


if __name__ == "__main__":
    main()
