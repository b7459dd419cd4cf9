"""The peer of `lasp bench train --compare-pytorch`: lasp's model written as PyTorch at its best for CPU training
(issue 29), timed by reference.py's time-step. Same model as reference.py's forward() (the same config.json and
parameter names), but written for speed instead of obviousness:

  - linear attention chunkwise with batched matmuls over every block at once (blocks of `block` tokens): the
    intra-block masked (q k^T * decay) v, plus q times the state entering the block; the states come from the
    blocks' own k^T v by one matmul with the block-to-block decay matrix (no loop over blocks). GLA (GATES.md)
    the same way with per-key-dim gates, in log space relative to the middle of the block and to the block ends;
  - softmax layers through F.scaled_dot_product_attention(is_causal=True) where torch has it (2.x), GQA by its
    enable_gqa (2.5+) or repeat_interleave, else a masked softmax (torch 1.13);
  - the projections that read the same input as one matmul (q, k, v, gate; the MLP's gate and up);
  - the loss function optionally through torch.compile (Inductor), bf16 through torch.autocast, AdamW fused
    where torch has it, else foreach, with lasp's settings (betas 0.9/0.95, weight decay 0.1 on matrices only,
    gradient-norm clipping at 1).

Runs under Debian's torch 1.13 too (no SDPA, no compile, no fused AdamW there), so that reference.py's selftest
checks it against the float64 reference.
"""
import math, re, statistics, time

import torch
import torch.nn.functional as F

FEATURE_MAPS = {"silu": F.silu, "elu1": lambda x: F.elu(x) + 1.0, "relu": F.relu, "identity": lambda x: x}
HAS_SDPA = hasattr(F, "scaled_dot_product_attention")
HAS_COMPILE = hasattr(torch, "compile")


def _sdpa_takes_gqa():
    try:
        F.scaled_dot_product_attention(torch.zeros(1, 2, 1, 2), torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2),
                                       enable_gqa=True)
        return True
    except (AttributeError, TypeError, RuntimeError):
        return False


HAS_GQA = _sdpa_takes_gqa()  # SDPA's enable_gqa (torch >= 2.5): 6% faster than repeat_interleave (N = 4096, fp32)


def auto_block(N, d):
    """Blocks of L tokens cost ~N L d (the intra-block products) plus (N / L)^2 d^2 (the states by the
    block-to-block matrix): least at L^3 = 2 N d; the power of two nearest to that, within 64..256."""
    return min(256, max(64, 2 ** round(math.log2(2 * N * d) / 3)))


def constants(c, lam, N, block, dtype):
    """What depends only on the config and N, made once outside the step (float64, then dtype): the decay
    masks of the chunked linear attention (lam [H]: each head's decay, reference.py's decays(); ones for none
    and gla) and RoPE's cos/sin."""
    d = c["hidden_size"] // c["num_attention_heads"]
    L, n = block, -(-N // block)
    lam = lam.to(torch.float64)[:, None, None]                                    # [H, 1, 1]
    i = torch.arange(L, dtype=torch.float64)
    dist = i[:, None] - i[None, :]
    b = torch.arange(n, dtype=torch.float64)
    bdist = b[:, None] - 1 - b[None, :]                                           # b - 1 - c for c < b
    k = {"intra": torch.where(dist >= 0, lam ** dist.clamp(min=0), torch.zeros(())),      # [H, L, L]: lam^(i-j)
         "q_decay": lam[:, :, 0, None] ** (i[:, None] + 1),                                 # [H, L, 1]: lam^(i+1)
         "k_decay": lam[:, :, 0, None] ** (L - 1 - i[:, None]),                             # [H, L, 1]: lam^(L-1-j)
         "blocks": torch.where(bdist >= 0, lam ** (L * bdist.clamp(min=0)), torch.zeros(())),  # [H, n, n]
         "tril": torch.ones(L, L, dtype=torch.bool).tril(),
         "before": torch.ones(n, n, dtype=torch.bool).tril(-1)[:, :, None]}                # [n, n, 1]: c < b
    if d % 2 == 0:
        inv_freq = c["rope_theta"] ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        ang = torch.arange(N, dtype=torch.float64)[:, None] * inv_freq[None, :]
        ang = torch.cat([ang, ang], dim=-1)
        k["cos"], k["sin"] = torch.cos(ang), torch.sin(ang)
    k = {key: v.to(dtype) if v.is_floating_point() else v for key, v in k.items()}
    k["block"] = L
    return k


def blocks(t, L):
    """[B, H, N, d] -> [B, H, n, L, d], zero-padded to whole blocks (padding after the last token changes no
    earlier output of a causal layer)."""
    B, H, N, d = t.shape
    pad = -N % L
    return (F.pad(t, (0, 0, 0, pad)) if pad else t).reshape(B, H, (N + pad) // L, L, d)


def linear_chunked(q, k, v, K):
    """o_i = sum_{j<=i} lam^(i-j) (q_i . k_j) v_j for q, k, v [B, H, N, d]; lam per head in K's masks."""
    N, L = q.shape[2], K["block"]
    q, k, v = blocks(q, L), blocks(k, L), blocks(v, L)
    B, H, n, _, d = q.shape
    intra = ((q @ k.transpose(-1, -2)) * K["intra"][:, None]) @ v                 # within each block
    own = (k * K["k_decay"][:, None]).transpose(-1, -2) @ v                       # [B, H, n, d, d]: each block's state
    state = (K["blocks"] @ own.reshape(B, H, n, d * d)).reshape(B, H, n, d, d)    # the state entering each block
    o = intra + (q * K["q_decay"][:, None]) @ state
    return o.reshape(B, H, n * L, d)[:, :, :N]


def gla_chunked(q, k, v, g, K):
    """GATES.md's S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t, o_t = q_t S_t, for q, k, v, g [B, H, N, d]."""
    N, L = q.shape[2], K["block"]
    q, k, v = blocks(q, L), blocks(k, L), blocks(v, L)
    g = blocks(g.to(torch.promote_types(g.dtype, torch.float32)), L)
    B, H, n, _, d = q.shape
    cum = g.cumsum(-2)                                                   # log gate product from the block start
    mid, last = cum[..., L // 2: L // 2 + 1, :], cum[..., L - 1:, :]
    # Within a block: exp(cum_i - cum_j) split at the block's middle, so neither factor exceeds half a block's gates.
    a = ((q * torch.exp(cum - mid)) @ (k * torch.exp(mid - cum)).transpose(-1, -2)).masked_fill(~K["tril"], 0)
    own = (k * torch.exp(last - cum)).transpose(-1, -2) @ v                      # [B, H, n, d, d]
    # State entering block b: sum_{c<b} diag(exp(C_{b-1} - C_c)) own_c, C_b = the log gates through block b.
    total = cum[..., L - 1, :].cumsum(-2)                                         # [B, H, n, d]
    before = total - cum[..., L - 1, :]                                           # C_{b-1}
    decay = torch.exp((before[:, :, :, None] - total[:, :, None]).masked_fill(~K["before"], float("-inf")))
    state = torch.einsum("zhbck,zhckv->zhbkv", decay, own)
    o = a @ v + (q * torch.exp(cum)) @ state
    return o.reshape(B, H, n * L, d)[:, :, :N]


def rms(x, w, eps):
    x = x.to(torch.promote_types(x.dtype, w.dtype))   # autocast's bf16 attention output: the fused fp32 kernel
    if hasattr(F, "rms_norm"):
        return F.rms_norm(x, (x.shape[-1],), w, eps)
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w


def rope(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


def causal_attention(q, k, v):
    """q [B, H, N, d], k, v [B, H_kv, N, d]; scale 1/sqrt(d)."""
    if HAS_GQA:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    if HAS_SDPA:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    N = q.shape[2]
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    mask = torch.ones(N, N, dtype=torch.bool, device=q.device).triu(1)
    return torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1) @ v


def projections(h, weights):
    """h times each of weights ([out, in] as nn.Linear's), as ONE matmul with the weights stacked (as gpt-fast's
    wqkv and w13): a bf16 autocast step 1.27x faster than with one matmul each (LLLL, N = 4096; fp32: the same
    within the noise of a loaded machine)."""
    return F.linear(h, torch.cat(weights)).split([w.shape[0] for w in weights], dim=-1)


def forward(c, p, tokens, K):
    """tokens [B, N] -> logits [B, N, V]: reference.py's forward(), written for speed."""
    B, N = tokens.shape
    D, H, Hkv, eps = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["rms_norm_eps"]
    d, la = D // H, c["linear_attention"]
    phi = FEATURE_MAPS[la["feature_map"]]
    heads = lambda t, m: t.view(B, N, m, d).transpose(1, 2)                      # [B, m, N, d]
    merge = lambda t: t.transpose(1, 2).reshape(B, N, -1)
    x = F.embedding(tokens, p["model.embed_tokens.weight"])
    for i, kind in enumerate(c["layer_types"]):
        pre = f"model.layers.{i}."
        W = lambda name: p[pre + name + ".weight"]
        h = rms(x, W("input_layernorm"), eps)
        gate, gla = kind == "L" and la["output_gate"], kind == "L" and la["decay"] == "gla"
        names = ["q_proj", "k_proj", "v_proj"] + ["g_proj"] * gate + ["gk_proj.0"] * gla
        q, k, v, *rest = projections(h, [W("self_attn." + name) for name in names])
        if kind == "L":
            q, k, v = heads(phi(q), H), heads(phi(k), H), heads(v, H)
            if gla:
                z = F.linear(rest[-1], W("self_attn.gk_proj.1"), p[pre + "self_attn.gk_proj.1.bias"])
                o = gla_chunked(q, k, v, heads(F.logsigmoid(z) / la["gate_normalizer"], H), K)
            else:
                o = linear_chunked(q, k, v, K)
            if la["output_norm"]:
                o = rms(o, W("self_attn.o_norm"), eps)
            o = merge(o)
            if gate:
                o = o * F.silu(rest[0])
        else:
            q = rope(heads(q, H), K["cos"], K["sin"])
            k = rope(heads(k, Hkv), K["cos"], K["sin"])
            o = merge(causal_attention(q, k, heads(v, Hkv)))
        x = x + F.linear(o, W("self_attn.o_proj"))
        h = rms(x, W("post_attention_layernorm"), eps)
        a, b = projections(h, [W("mlp.gate_proj"), W("mlp.up_proj")])
        x = x + F.linear(F.silu(a) * b, W("mlp.down_proj"))
    lm = p["model.embed_tokens.weight"] if c["tie_word_embeddings"] else p["lm_head.weight"]
    return F.linear(rms(x, p["model.norm.weight"], eps), lm)


def loss_function(c, K, bf16):
    """(params, inputs, targets) -> mean cross-entropy, under bf16 autocast when asked."""
    def loss(p, x, y):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = forward(c, p, x, K)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))             # bf16 -> fp32
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    return loss


def adamw(p, lr=1e-4):
    """lasp's AdamW: betas 0.9/0.95, weight decay 0.1 on matrices and embeddings, none on norms and biases; the
    fused kernel where torch has one for the CPU, else foreach. Returns (optimizer, its kind)."""
    groups = [{"params": [v for v in p.values() if v.dim() >= 2]},
              {"params": [v for v in p.values() if v.dim() < 2], "weight_decay": 0.0}]
    for kind in ("fused", "foreach"):
        try:   # a throwaway step first: some versions accept fused=True and refuse the CPU only when stepping
            w = torch.zeros(1, requires_grad=True)
            w.grad = torch.ones(1)
            torch.optim.AdamW([w], **{kind: True}).step()
            return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), weight_decay=0.1, **{kind: True}), kind
        except (TypeError, RuntimeError, ValueError):
            pass
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), weight_decay=0.1), "for-loop"


def blas_info():
    """What torch was built with: BLAS_INFO from torch.__config__.show() and whether MKL and oneDNN are in."""
    m = re.search(r"BLAS_INFO=([^,\s]+)", torch.__config__.show())
    return {"blas_info": m.group(1) if m else "unknown", "mkl": torch.backends.mkl.is_available(),
            "mkldnn": torch.backends.mkldnn.is_available()}


def profile_step(step, rows):
    """Where one step's time goes: the `rows` operators of most self CPU time under torch.profiler, each with its
    milliseconds and share of the step."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events) or 1
    events.sort(key=lambda e: -e.self_cpu_time_total)
    return [{"op": e.key, "ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total, "calls": e.count}
            for e in events[:rows]]


def time_peer(c, lam, p, tokens, repeats, bf16, block, compile_mode, profile_rows=0):
    """Median seconds of one training step (zero_grad, forward, backward, clip, AdamW), eager and (compile_mode
    'auto' or 'on') through torch.compile, the two timed in turns, step by step, so that a noisy machine weighs
    on both alike. Returns the JSON fields of time-step; with profile_rows, also the best form's profile
    (profile_step)."""
    N = tokens.shape[1] - 1
    block = block or auto_block(N, c["hidden_size"] // c["num_attention_heads"])
    K = constants(c, lam, N, block, torch.float32)
    x, y = tokens[:, :-1], tokens[:, 1:]
    opt, opt_kind = adamw(p)
    params = list(p.values())
    eager = loss_function(c, K, bf16)
    out = {"formulation": f"chunked linear attention (block {block}, batched matmuls), "
                          f"{'scaled_dot_product_attention' if HAS_SDPA else 'masked softmax'}, AdamW {opt_kind}",
           "block": block, "sdpa": HAS_SDPA, "gqa": "enable_gqa" if HAS_GQA else "repeat_interleave",
           "optimizer": opt_kind, "compile": {"ran": False}}

    def make_step(fn):
        def step():
            opt.zero_grad(set_to_none=True)
            fn(p, x, y).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        return step
    steps = {"eager": make_step(eager)}
    steps["eager"]()                                                             # warm-up
    if compile_mode == "off":
        out["compile"]["reason"] = "--compile off"
    elif not HAS_COMPILE:
        out["compile"]["reason"] = f"torch {torch.__version__} has no torch.compile"
    else:
        try:
            step = make_step(torch.compile(eager, dynamic=False))
            t0 = time.perf_counter()
            step()                                                               # compiles forward and backward
            out["compile"] = {"ran": True, "first_step_seconds": time.perf_counter() - t0}
            step()                                                               # warm-up
            steps["compiled"] = step
        except Exception as e:                                                   # say why, time eager only
            first = (str(e).strip().splitlines() or [""])[0]
            out["compile"] = {"ran": False, "reason": f"{type(e).__name__}: {first}"[:500]}
            if compile_mode == "on":
                raise
    times = {mode: [] for mode in steps}
    for _ in range(repeats):
        for mode, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[mode].append(time.perf_counter() - t0)
    for mode, t in times.items():
        s = statistics.median(t)
        out[mode] = {"tokens_per_s": x.numel() / s, "seconds_per_step": s}
    best = max(steps, key=lambda mode: out[mode]["tokens_per_s"])
    out.update(best=best, tokens_per_s=out[best]["tokens_per_s"], seconds_per_step=out[best]["seconds_per_step"])
    if profile_rows:
        out["profile"] = profile_step(steps[best], profile_rows)
    return out


def check(c, lam, p, tokens, reference_loss, reference_grads, dtype, block, compiled, bf16=False):
    """The peer's loss and gradients (parameters p cast to `dtype`) against the float64 reference's. Returns two
    (error, name of the worst) pairs over the loss and every gradient: max|a-b| / max|b|, and the normalized
    squared error sum (a-b)^2 / sum b^2 (lasp's bf16 measure, tests/test_precision.cpp)."""
    K = constants(c, lam, tokens.shape[1] - 1, block, dtype)
    fn = loss_function(c, K, bf16)
    if compiled:
        fn = torch.compile(fn, dynamic=False)
    q = {k: v.detach().to(dtype).requires_grad_(True) for k, v in p.items()}
    loss = fn(q, tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    rel = abs(loss.item() - reference_loss) / abs(reference_loss)
    worst_max, worst_sq = (rel, "loss"), (rel * rel, "loss")
    for k, g in reference_grads.items():
        diff = q[k].grad.double() - g
        e_max = (diff.abs().max() / g.abs().max().clamp(min=1e-300)).item()
        e_sq = ((diff * diff).sum() / (g * g).sum().clamp(min=1e-300)).item()
        if not e_max <= worst_max[0]:   # NaN counts as worst
            worst_max = (e_max, k)
        if not e_sq <= worst_sq[0]:
            worst_sq = (e_sq, k)
    return worst_max, worst_sq
