#!/usr/bin/python3
"""Independent PyTorch reference of lasp's model (design/MODEL.md), used by the C++ tests.

Run with /usr/bin/python3 (needs torch and numpy; nothing else). Subcommands:

  grads     --checkpoint DIR --tokens FILE --batch B --out OUT.safetensors [--dtype float64|float32]
            [--out-dtype F32|F64]
            tokens FILE: raw little-endian int32, shape (B, N+1); inputs [:, :-1], targets [:, 1:].
            OUT holds "logits" [B, N, V], "loss" [1] and "grad.<name>" for every parameter
            (gradient of the mean loss), all in --out-dtype (default F32).
  eval      --checkpoint DIR --data PATH --seq-len N --batches K [--format text|shard] [--dtype ...]
            window k = tokens [k*N, k*N+N] (inputs the first N, targets the last N);
            prints {"loss": mean CE over K*N predictions, "tokens": K*N}.
  train     --checkpoint DIR --tokens FILE --batch B --steps S --lr LR [--weight-decay 0.1 --beta1 0.9
            --beta2 0.95 --eps 1e-8 --clip 1.0 --decay-filter all|matrices --dtype ... --out DIR]
            S steps of torch.optim.AdamW(foreach=False), constant lr, clip_grad_norm_ (clip <= 0: off),
            same batch every step; prints {"losses": [loss before each update]}; --out saves the result.
  init      --config config.json --out DIR --seed S [--std 0.02]   random fp32 checkpoint
            (matrices and conv weights ~ N(0, std^2); every norm weight ~ 1 + 0.1 N(0, 1); rebased's
            feature_map.gamma 1, .beta 0; GDN's A_log and dt_bias by FLA's recipe, DELTA.md).
  time-step --config config.json --seq-len N --batch B --repeats R [--threads T] [--precision fp32|bf16] [--profile N]
            [--block L] [--compile auto|on|off]
            one training step (zero_grad, forward, backward, clip, AdamW) of the peer (tools/peer.py: the same
            model as PyTorch at its best on the CPU: chunked linear attention of blocks of L tokens, SDPA,
            torch.compile, fused AdamW), fp32 or under torch.autocast(bfloat16); median over R steps, eager and
            (auto: where torch has it) compiled, timed in turns; prints {"tokens_per_s": the better,
            "eager": {...}, "compiled": {...}, "compile": {"ran": ..., "first_step_seconds" or "reason"},
            "torch": version, "python": ..., "blas_info": torch's BLAS_INFO, "precision": ..., ...}. Use
            scripts/setup_peer.sh's .venv-peer/bin/python for current PyTorch; /usr/bin/python3 (torch 1.13)
            runs it without SDPA and compile. Based/Rebased and GDN (which the peer lacks) are timed on this file's
            own chunkwise forward instead, eager only (the same fields; "formulation" says so; --compile on: error).
  blas      prints {"blas": the BLAS library PyTorch uses, "reference": whether it is the slow reference BLAS}
            (Debian's torch takes whatever libblas.so.3 points to; time-step prints the same keys).
  selftest  naive vs chunkwise linear attention, gradcheck of the whole model, causality,
            Based/Rebased (kernel formulas, chunkwise == naive with documents, gradcheck of the model with gamma
            and beta, config validation), Gated DeltaNet (chunkwise WY == token recurrence with documents, the
            short conv == nn.Conv1d, autograd == finite differences with GVA, documents, conv 4 and 0, config, init,
            init -> grads), init -> grads -> read-back round trip, the peer (eager) against the model. Exit
            status 1 on failure.
  peer-selftest  the peer in fp32 (eager, and compiled where torch.compile exists) and under bf16 autocast
            against the float64 model, loss and every gradient; for .venv-peer/bin/python (slow: it compiles).

User errors (bad config, missing/misshaped tensors, short data) print "error: ..." and exit with 2.
The model is written naively (quadratic masked linear attention) so that it is obviously right.
Linear layers: feature_map silu | elu1 | relu | identity (element-wise) or based | rebased (FEATURE_MAPS.md: q, k
of linear_attention.feature_dim per head, expanded to D' features, normalized by s + normalizer_eps; decay none).
decay "gdn" (DELTA.md): every 'L' layer is Gated DeltaNet (FLA's tensors: short convs, l2-normalized q and k, the
delta rule with log-gate -exp(A_log) softplus(W_a a + dt_bias); keys head_k_dim, head_v_dim, num_v_heads (GVA),
conv_size), a plain token-by-token recurrence (fast=True: the chunkwise WY form); documents restart both the conv
and the state.
"""
import argparse, json, math, os, shutil, statistics, struct, sys, tempfile, time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer  # noqa: E402  (tools/peer.py)


class UserError(Exception):
    pass


# ----------------------------------------------------------------------------------------- config
FEATURE_MAPS = {"silu": F.silu, "elu1": lambda x: F.elu(x) + 1.0, "relu": F.relu, "identity": lambda x: x}
EXPANDED_MAPS = ("based", "rebased")  # row maps f -> D' with a normalizer (FEATURE_MAPS.md)
DECAYS = ("none", "lightning", "retention", "gla", "gdn")
GDN_KEYS = ("head_k_dim", "head_v_dim", "num_v_heads", "conv_size")  # DELTA.md: linear_attention keys of decay gdn


def validate_config(c):
    """Fills defaults in place and checks consistency; raises UserError with a clear message."""
    def need(key):
        if key not in c:
            raise UserError(f"config: missing key '{key}'")
        return c[key]
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        if not isinstance(need(key), int) or c[key] <= 0:
            raise UserError(f"config: '{key}' must be a positive integer, got {c[key]!r}")
    c.setdefault("num_key_value_heads", c["num_attention_heads"])
    c.setdefault("rms_norm_eps", 1e-5)
    c.setdefault("rope_theta", 500000.0)
    c.setdefault("tie_word_embeddings", False)
    c.setdefault("layer_types", "L" * c["num_hidden_layers"])
    la = c.setdefault("linear_attention", {})
    la.setdefault("feature_map", "silu"); la.setdefault("decay", "none")
    la.setdefault("output_norm", True); la.setdefault("output_gate", True)
    la.setdefault("gate_low_rank", 16); la.setdefault("gate_normalizer", 16.0)
    D, H, Hkv, lt = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["layer_types"]
    if not isinstance(lt, str) or any(ch not in "LN" for ch in lt):
        raise UserError(f"config: layer_types must be a string of 'L'/'N' letters, got {lt!r}")
    if len(lt) != c["num_hidden_layers"]:
        raise UserError(f"config: layer_types {lt!r} has {len(lt)} letters but num_hidden_layers is "
                        f"{c['num_hidden_layers']}")
    if D % H:
        raise UserError(f"config: num_attention_heads {H} does not divide hidden_size {D}")
    if (D // H) % 2 and "N" in lt:
        raise UserError(f"config: head dim {D // H} must be even for RoPE in softmax layers")
    if c.get("head_dim", D // H) != D // H:
        raise UserError(f"config: head_dim {c['head_dim']} != hidden_size / num_attention_heads = {D // H}")
    if not isinstance(Hkv, int) or Hkv <= 0 or H % Hkv:
        raise UserError(f"config: num_key_value_heads {Hkv} must divide num_attention_heads {H}")
    if la["feature_map"] not in FEATURE_MAPS and la["feature_map"] not in EXPANDED_MAPS:
        raise UserError(f"config: linear_attention.feature_map {la['feature_map']!r} not in "
                        f"{list(FEATURE_MAPS) + list(EXPANDED_MAPS)}")
    if la["decay"] not in DECAYS:
        raise UserError(f"config: linear_attention.decay {la['decay']!r} not in {list(DECAYS)}")
    if la["decay"] == "gdn" and la["feature_map"] != "silu":
        raise UserError(f"config: linear_attention.feature_map {la['feature_map']!r} cannot be used with decay 'gdn': "
                        f"expected 'silu' (Gated DeltaNet's activation after the short convolutions)")
    # FEATURE_MAPS.md "config.json and tensors": feature_dim f (absent: d), normalizer_eps (absent: 1e-10)
    f = la.setdefault("feature_dim", D // H)
    if isinstance(f, bool) or not isinstance(f, int) or f <= 0:
        raise UserError(f"config: linear_attention.feature_dim must be a positive integer, got {f!r}")
    eps_n = la.setdefault("normalizer_eps", 1e-10)
    if isinstance(eps_n, bool) or not isinstance(eps_n, (int, float)) or not math.isfinite(eps_n) or eps_n < 0:
        raise UserError(f"config: linear_attention.normalizer_eps must be a finite number >= 0, got {eps_n!r}")
    if la["feature_map"] in EXPANDED_MAPS:
        if la["decay"] != "none":
            raise UserError(f"config: linear_attention.decay {la['decay']!r} cannot be used with "
                            f"linear_attention.feature_map {la['feature_map']!r}: based and rebased take decay "
                            f"'none' (a decay would have to scale the normalizer too)")
    elif f != D // H:
        raise UserError(f"config: linear_attention.feature_dim {f} != head dim {D // H}: the element-wise feature "
                        f"map {la['feature_map']!r} keeps q and k at the head dim (feature_dim other than d needs "
                        f"feature_map 'based' or 'rebased')")
    # DELTA.md "The layer": Gated DeltaNet's keys, only with decay "gdn"; d_k, d_v default d, HV defaults H, K 4
    if la["decay"] != "gdn":
        given = [key for key in GDN_KEYS if key in la]
        if given:
            raise UserError(f"config: linear_attention.{given[0]} is a key of decay 'gdn' (Gated DeltaNet), but "
                            f"linear_attention.decay is {la['decay']!r}: expected decay 'gdn' or no "
                            f"{', '.join(given)}")
        return c
    for key, dflt, low in (("head_k_dim", D // H, 1), ("head_v_dim", D // H, 1), ("num_v_heads", H, 1),
                           ("conv_size", 4, 0)):
        val = la.setdefault(key, dflt)
        if isinstance(val, bool) or not isinstance(val, int) or val < low:
            raise UserError(f"config: linear_attention.{key} must be an integer >= {low}, got {val!r}")
    if la["num_v_heads"] % H:
        raise UserError(f"config: linear_attention.num_v_heads {la['num_v_heads']} must be a multiple of "
                        f"num_attention_heads {H} (value head h reads q/k head h / (num_v_heads / num_heads))")
    return c


def config_refused(base, la, words):
    """True when validate_config refuses base with linear_attention la, its message holding every one of words."""
    try:
        validate_config(dict(base, linear_attention=la))
    except UserError as e:
        return all(w in str(e) for w in words)
    return False


def load_config(path):
    try:
        with open(path) as f:
            c = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read config {path}: {e}")
    return validate_config(c)


def param_shapes(c):
    """Ordered {name: shape} of every parameter, as MODEL.md names them."""
    V, D, Fw, H = c["vocab_size"], c["hidden_size"], c["intermediate_size"], c["num_attention_heads"]
    d, Hkv, la = D // H, c["num_key_value_heads"], c["linear_attention"]
    expanded = la["feature_map"] in EXPANDED_MAPS
    s = {"model.embed_tokens.weight": [V, D]}
    for i, t in enumerate(c["layer_types"]):
        p, kv = f"model.layers.{i}.", (H * d if t == "L" else Hkv * d)
        qk = H * la["feature_dim"] if t == "L" and expanded else None       # based/rebased: f per head
        s[p + "input_layernorm.weight"] = [D]
        s[p + "self_attn.q_proj.weight"] = [qk or H * d, D]
        s[p + "self_attn.k_proj.weight"] = [qk or kv, D]
        if t == "L" and la["feature_map"] == "rebased":                   # one pair per layer (FLA's names)
            s[p + "self_attn.feature_map.gamma"] = [la["feature_dim"]]
            s[p + "self_attn.feature_map.beta"] = [la["feature_dim"]]
        if t == "L" and la["decay"] == "gdn":                            # DELTA.md: FLA's names and shapes
            dk, dv, HV, K = la["head_k_dim"], la["head_v_dim"], la["num_v_heads"], la["conv_size"]
            a = p + "self_attn."
            s[a + "q_proj.weight"], s[a + "k_proj.weight"] = [H * dk, D], [H * dk, D]
            s[a + "v_proj.weight"] = [HV * dv, D]
            s[a + "a_proj.weight"], s[a + "b_proj.weight"] = [HV, D], [HV, D]
            s[a + "A_log"], s[a + "dt_bias"] = [HV], [HV]
            if K > 0:
                s[a + "q_conv1d.weight"], s[a + "k_conv1d.weight"] = [H * dk, 1, K], [H * dk, 1, K]
                s[a + "v_conv1d.weight"] = [HV * dv, 1, K]
            if la["output_gate"]:
                s[a + "g_proj.weight"] = [HV * dv, D]
            if la["output_norm"]:
                s[a + "o_norm.weight"] = [dv]
            s[a + "o_proj.weight"] = [D, HV * dv]
            s[p + "post_attention_layernorm.weight"] = [D]
            s[p + "mlp.gate_proj.weight"] = [Fw, D]
            s[p + "mlp.up_proj.weight"] = [Fw, D]
            s[p + "mlp.down_proj.weight"] = [D, Fw]
            continue
        s[p + "self_attn.v_proj.weight"] = [kv, D]
        s[p + "self_attn.o_proj.weight"] = [D, H * d]
        if t == "L" and la["output_gate"]:
            s[p + "self_attn.g_proj.weight"] = [H * d, D]
        if t == "L" and la["output_norm"]:
            s[p + "self_attn.o_norm.weight"] = [d]
        if t == "L" and la["decay"] == "gla":
            r = la["gate_low_rank"]
            s[p + "self_attn.gk_proj.0.weight"] = [r, D]
            s[p + "self_attn.gk_proj.1.weight"] = [H * d, r]
            s[p + "self_attn.gk_proj.1.bias"] = [H * d]
        s[p + "post_attention_layernorm.weight"] = [D]
        s[p + "mlp.gate_proj.weight"] = [Fw, D]
        s[p + "mlp.up_proj.weight"] = [Fw, D]
        s[p + "mlp.down_proj.weight"] = [D, Fw]
    s["model.norm.weight"] = [D]
    if not c["tie_word_embeddings"]:
        s["lm_head.weight"] = [V, D]
    return s


# ------------------------------------------------------------------------------------ safetensors
def read_safetensors(path):
    """{name: float64-or-float32 torch tensor}; accepts F32, F64, F16, BF16."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e}")
    (n,) = struct.unpack("<Q", raw[:8])
    header, data, out = json.loads(raw[8:8 + n]), memoryview(raw)[8 + n:], {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        buf, dt = data[b:e], info["dtype"]
        if dt == "BF16":
            a = (np.frombuffer(buf, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            a = np.frombuffer(buf, {"F32": "<f4", "F64": "<f8", "F16": "<f2"}[dt]).astype(np.float32 if dt != "F64" else np.float64)
        out[name] = torch.from_numpy(a.reshape(info["shape"]).copy())
    return out


def write_safetensors(path, tensors, dtype="F32", metadata=None):
    np_dt = {"F32": "<f4", "F64": "<f8"}[dtype]
    arrays = {k: np.ascontiguousarray(v.detach().cpu().double().numpy().astype(np_dt)) for k, v in tensors.items()}
    header, off = {"__metadata__": metadata or {}}, 0
    for k, a in arrays.items():
        header[k] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        off += a.nbytes
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)  # keep the data 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for a in arrays.values():
            f.write(a.tobytes())


def load_checkpoint(folder, dtype):
    c = load_config(os.path.join(folder, "config.json"))
    t = read_safetensors(os.path.join(folder, "model.safetensors"))
    shapes = param_shapes(c)
    missing = [k for k in shapes if k not in t]
    extra = [k for k in t if k not in shapes]
    if missing or extra:
        raise UserError(f"checkpoint {folder}: missing tensors {missing}, unexpected tensors {extra}")
    for k, s in shapes.items():
        if list(t[k].shape) != s:
            raise UserError(f"checkpoint {folder}: {k} has shape {list(t[k].shape)}, expected {s}")
    return c, {k: t[k].to(dtype).requires_grad_(True) for k in shapes}


def save_checkpoint(folder, config_path, params):
    """Writes params as fp32 model.safetensors and copies config_path verbatim as config.json."""
    os.makedirs(folder, exist_ok=True)
    if os.path.abspath(config_path) != os.path.abspath(os.path.join(folder, "config.json")):
        shutil.copyfile(config_path, os.path.join(folder, "config.json"))
    write_safetensors(os.path.join(folder, "model.safetensors"), params, "F32", {"format": "pt"})


# ------------------------------------------------------------------------------------------ model
def alibi_slopes(n):
    """The ALiBi slopes of n heads, as the paper's code (Linear-MoE) builds them (MODEL.md)."""
    def power_of_two(n):
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]
    c = 2 ** int(math.floor(math.log2(n)))
    return power_of_two(n) if c == n else power_of_two(c) + alibi_slopes(2 * c)[0::2][: n - c]


def decays(c, H):
    kind = c["linear_attention"]["decay"]
    h = torch.arange(H, dtype=torch.float64)
    if kind == "lightning":
        return torch.exp(-torch.tensor(alibi_slopes(H), dtype=torch.float64))
    if kind == "retention":
        return 1.0 - torch.pow(2.0, -5.0 - h)
    return torch.ones(H, dtype=torch.float64)


def same_document(tokens, start):
    """[B, N, N] bool: tokens i and j lie in the same document (MODEL.md: a document runs from a start token to
    the token before the next one; the row's first document begins at 0). None when start is None or < 0."""
    if start is None or start < 0:
        return None
    doc = torch.cumsum((tokens == start).long(), dim=1)                  # [B, N]: the document's index
    return doc[:, :, None] == doc[:, None, :]


def linear_attention_naive(q, k, v, lam, same=None):
    """q, k, v [B, H, N, d]; lam [H]. o_i = sum_{j<=i} lam^(i-j) (q_i . k_j) v_j, as one masked product; with
    same [B, N, N] (documents) only over the j of i's document."""
    N = q.shape[2]
    i = torch.arange(N, dtype=torch.float64)
    dist = i[:, None] - i[None, :]                                        # i - j
    psi = torch.where(dist >= 0, lam[:, None, None] ** dist.clamp(min=0), torch.zeros(()).double()).to(q.dtype)
    if same is not None:
        psi = psi * same[:, None].to(q.dtype)                             # [B, H, N, N]
    return ((q @ k.transpose(-1, -2)) * psi) @ v


def linear_attention_chunkwise(q, k, v, lam, block=64):
    """Same result through the right-product recurrence of LASP2.md section 1 (blocks of `block`)."""
    B, H, N, d = q.shape
    lam = lam.to(q.dtype)
    S, out = q.new_zeros(B, H, d, d), []
    for s in range(0, N, block):
        L = min(block, N - s)
        qb, kb, vb = q[:, :, s:s + L], k[:, :, s:s + L], v[:, :, s:s + L]
        i = torch.arange(L, dtype=q.dtype)
        dist = i[:, None] - i[None, :]
        psi = torch.where(dist >= 0, lam[:, None, None] ** dist.clamp(min=0), torch.zeros((), dtype=q.dtype))
        intra = ((qb @ kb.transpose(-1, -2)) * psi) @ vb
        inter = (lam[:, None, None] ** i[:, None]) * (qb @ S)                # diag(lam^i') Q_b S_b
        out.append(intra + inter)
        S = (lam ** L)[:, None, None] * S + kb.transpose(-1, -2) @ ((lam[:, None, None] ** (L - i)[:, None]) * vb)
    return torch.cat(out, dim=2)


def based_features(x):
    """FEATURE_MAPS.md's compact Taylor map in Linear-MoE's order, x [..., f] -> [..., 1 + f + f(f+1)/2]:
    [1 | x / f^(1/4) | x_i^2 / sqrt(2f) | x_i x_j / sqrt(f) (i < j, row-major)]; phi(q).phi(k) = 1 + s + s^2/2
    with s = q.k / sqrt(f)."""
    f = x.shape[-1]
    i, j = torch.triu_indices(f, f, 1)
    return torch.cat([torch.ones_like(x[..., :1]), x / f ** 0.25, x * x / math.sqrt(2 * f),
                      x[..., i] * x[..., j] / math.sqrt(f)], dim=-1)


def rebased_features(x, gamma, beta):
    """Rebased's map, x [..., f] -> [..., f(f+1)/2]: y = LayerNorm(x) (biased variance, eps 1e-6; gamma, beta [f]
    shared by q, k and all heads), then [y_i^2 / sqrt(f) | sqrt(2/f) y_i y_j (i < j)]; phi(q).phi(k) =
    (y_q . y_k)^2 / f."""
    f = x.shape[-1]
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    y = (x - mean) / torch.sqrt(var + 1e-6) * gamma + beta
    i, j = torch.triu_indices(f, f, 1)
    return torch.cat([y * y / math.sqrt(f), math.sqrt(2 / f) * y[..., i] * y[..., j]], dim=-1)


def normalized_linear_attention(phi_q, phi_k, v, eps, same=None):
    """Based and Rebased's attention core, naive: phi_q, phi_k [B, H, N, D'], v [B, H, N, d];
    o_i = n_i / (s_i + eps), n_i = sum_{j<=i} (phi_q_i . phi_k_j) v_j, s_i = sum_{j<=i} phi_q_i . phi_k_j (the
    token itself included); with same [B, N, N] (documents) only over the j of i's document."""
    N = phi_q.shape[2]
    a = (phi_q @ phi_k.transpose(-1, -2)) * torch.ones(N, N, dtype=torch.bool).tril().to(phi_q.dtype)
    if same is not None:
        a = a * same[:, None].to(phi_q.dtype)                            # [B, H, N, N]
    return (a @ v) / (a.sum(-1, keepdim=True) + eps)


def normalized_linear_attention_chunkwise(phi_q, phi_k, v, eps, block=64, starts=None):
    """The same through FEATURE_MAPS.md's augmented state: plain causal linear attention of phi_q, phi_k and
    [v | 1] (state D' x (d+1): numerator and normalizer together), divided once both parts are summed.
    starts [B, N] bool (documents): a start token resets the whole state (S and z); inside a block the scores
    keep only pairs of one document, a token reads the state entering the block only if its document was
    already open there, and the state leaving the block holds only the block's last document."""
    B, H, N, Dp = phi_q.shape
    vt = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)              # [v | 1]
    doc = torch.cumsum(starts.long(), dim=1) if starts is not None else None  # [B, N]: the document's index
    S, out = phi_q.new_zeros(B, H, Dp, vt.shape[-1]), []
    for s in range(0, N, block):
        qb, kb, vb = phi_q[:, :, s:s + block], phi_k[:, :, s:s + block], vt[:, :, s:s + block]
        scores = (qb @ kb.transpose(-1, -2)).tril()                      # tril keeps the diagonal
        if doc is None:
            y = scores @ vb + qb @ S
            S = S + kb.transpose(-1, -2) @ vb
        else:
            db = doc[:, s:s + block]                                     # [B, L]
            open_doc = doc[:, s - 1:s] if s > 0 else db[:, :1]           # the document open at the block's start
            mask = lambda m: m.to(phi_q.dtype)[:, None]                   # [B, 1, ...]
            y = (scores * mask(db[:, :, None] == db[:, None, :])) @ vb + (qb @ S) * mask(db == open_doc)[..., None]
            last = db[:, -1:]
            S = S * mask(last == open_doc)[..., None] + kb.transpose(-1, -2) @ (vb * mask(db == last)[..., None])
        out.append(y[..., :-1] / (y[..., -1:] + eps))
    return torch.cat(out, dim=2)


def gla_naive(q, k, v, g, starts=None):
    """GATES.md's recurrence: q, k, v, g [B, H, N, d] (g the log-gates); S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t,
    o_t = q_t S_t. starts [B, N] bool (documents): the gate of a start token is 0."""
    B, H, N, d = q.shape
    S, out = q.new_zeros(B, H, d, d), []
    for t in range(N):
        gate = torch.exp(g[:, :, t])
        if starts is not None:
            gate = torch.where(starts[:, t, None, None], torch.zeros_like(gate), gate)
        S = gate[..., None] * S + k[:, :, t, :, None] * v[:, :, t, None, :]
        out.append((q[:, :, t, :, None] * S).sum(-2))
    return torch.stack(out, dim=2)


def short_conv(x, w, starts=None):
    """DELTA.md's short causal depthwise convolution: x [B, N, C], w [C, 1, K] -> [B, N, C] with
    y_t[c] = sum_{i<K} w[c, 0, i] x_{t-K+1+i}[c] (the last tap meets token t; nn.Conv1d with groups = C, padding
    K-1, the first N outputs). starts [B, N] bool (documents): x_u counts as 0 before token t's document start."""
    B, N, C = x.shape
    K = w.shape[-1]
    doc = torch.cumsum(starts.long(), dim=1) if starts is not None else None   # [B, N]: the document's index
    y = torch.zeros_like(x)
    for i in range(K):
        back = K - 1 - i                                                 # tap i reads token t - back
        if back >= N:
            continue
        xs = torch.cat([x.new_zeros(B, back, C), x[:, :N - back]], dim=1)
        if doc is not None and back > 0:                                 # same document as t, else 0
            same = torch.cat([torch.zeros(B, back, dtype=torch.bool), doc[:, back:] == doc[:, :N - back]], dim=1)
            xs = xs * same[..., None].to(x.dtype)
        y = y + w[:, 0, i] * xs
    return y


def l2_normalize(x):
    """FLA's l2 norm over the last dimension: x / sqrt(sum x^2 + 1e-6)."""
    return x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-6)


def softplus(x):
    """log(1 + exp(x)), exact in float64: torch's threshold moved from 20 (where it returns x, up to 2.1e-9 off)
    to 50 (exp(-50) is below float64's resolution of x)."""
    return F.softplus(x, beta=1, threshold=50)


def gdn_recurrent(q, k, v, beta, g, starts=None):
    """DELTA.md's Gated DeltaNet recurrence, token by token: q, k [B, HV, N, d_k], v [B, HV, N, d_v], beta, g
    [B, HV, N]; S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T with alpha_t = exp(g_t),
    o_t = S_t^T q_t (S: d_k x d_v, the state after token t's own update). starts [B, N] bool (documents): a
    start token has alpha = 0."""
    B, HV, N, dk = q.shape
    S, out = q.new_zeros(B, HV, dk, v.shape[-1]), []
    for t in range(N):
        alpha = torch.exp(g[:, :, t])                                     # [B, HV]
        if starts is not None:
            alpha = torch.where(starts[:, t, None], torch.zeros_like(alpha), alpha)
        kt, vt, bt = k[:, :, t, :, None], v[:, :, t, None, :], beta[:, :, t, None, None]   # [.., dk, 1], [.., 1, dv]
        S = alpha[..., None, None] * (S - bt * kt @ (kt.transpose(-1, -2) @ S)) + bt * kt @ vt
        out.append((S.transpose(-1, -2) @ q[:, :, t, :, None])[..., 0])
    return torch.stack(out, dim=2)


def gdn_chunkwise(q, k, v, beta, g, starts=None, block=64):
    """The same through DELTA.md's chunkwise WY (UT) form, chunks of `block` tokens: per chunk with cumulative
    log-gates c, gamma = exp(c), Ld_ij = exp(c_i - c_j) (i >= j), L_k = strictly_lower(diag(beta) (K K^T) .* Ld),
    T = (I + L_k)^-1, W = T diag(beta gamma) K, U = T diag(beta) V, V' = U - W S,
    O = diag(gamma) Q S + ((Q K^T) .* Ld) V', S <- gamma_end S + K~^T V' (K~ = diag(exp(c_end - c)) K).
    Documents: c stays the plain sum and the factors are masked: Ld_ij = 0 if a start lies in (j, i], gamma_i = 0 if
    one lies in [1, i], exp(c_end - c_j) = 0 if one lies in (j, B]. Only exponents <= 0 are taken."""
    B, HV, N, dk = q.shape
    S, out = q.new_zeros(B, HV, dk, v.shape[-1]), []
    for s in range(0, N, block):
        L = min(block, N - s)
        qb, kb, vb, bb = q[:, :, s:s + L], k[:, :, s:s + L], v[:, :, s:s + L], beta[:, :, s:s + L]
        c = torch.cumsum(g[:, :, s:s + L], dim=-1)                        # [B, HV, L]
        cnt = (torch.cumsum(starts[:, s:s + L].long(), dim=1) if starts is not None
               else torch.zeros(B, L, dtype=torch.long))[:, None]         # [B, 1, L]: starts in [1, i]
        lower = torch.ones(L, L, dtype=torch.bool).tril()
        keep = lower & (cnt[..., :, None] == cnt[..., None, :])           # i >= j, no start in (j, i]
        diff = c[..., :, None] - c[..., None, :]
        Ld = torch.where(keep, torch.exp(torch.where(keep, diff, torch.zeros_like(diff))), torch.zeros_like(diff))
        gamma = torch.where(cnt == 0, torch.exp(c), torch.zeros_like(c))  # [B, HV, L]
        tail = torch.where(cnt == cnt[..., -1:], torch.exp(c[..., -1:] - c), torch.zeros_like(c))  # exp(c_end - c_j)
        Lk = (bb[..., :, None] * (kb @ kb.transpose(-1, -2)) * Ld).tril(-1)
        eye = torch.eye(L, dtype=q.dtype)
        T = torch.linalg.solve_triangular(eye + Lk, eye.expand_as(Lk), upper=False, unitriangular=True)
        Wm = T @ ((bb * gamma)[..., None] * kb)
        U = T @ (bb[..., None] * vb)
        Vp = U - Wm @ S
        out.append(gamma[..., None] * (qb @ S) + ((qb @ kb.transpose(-1, -2)) * Ld) @ Vp)
        S = gamma[..., -1:, None] * S + (tail[..., None] * kb).transpose(-1, -2) @ Vp
    return torch.cat(out, dim=2)


def gdn_layer(c, p, pre, h, starts=None, fast=False, block=64):
    """DELTA.md's Gated DeltaNet layer up to the attention output: h [B, N, D] (the input_layernorm output) ->
    o [B, HV, N, d_v] (before o_norm, the gate and o_proj). pre: 'model.layers.{i}.self_attn.'. q, k =
    l2(silu(conv(W h))) (q over sqrt(d_k)), v = silu(conv(W_v h)); beta = sigmoid(W_b h);
    g = -exp(A_log) softplus(W_a h + dt_bias); value head hv reads q/k head hv // (HV / H). starts: documents
    (the conv reads nothing before t's document start; alpha = 0 at a start). fast: the chunkwise form."""
    la, H = c["linear_attention"], c["num_attention_heads"]
    dk, dv, HV, K = la["head_k_dim"], la["head_v_dim"], la["num_v_heads"], la["conv_size"]
    B, N, _ = h.shape
    def branch(name, x):                                                # [B, N, C] -> silu(conv(x))
        return F.silu(short_conv(x, p[pre + name + "_conv1d.weight"], starts) if K > 0 else x)
    heads = lambda t, n, w: t.view(B, N, n, w).transpose(1, 2)           # [B, n, N, w]
    q = l2_normalize(heads(branch("q", h @ p[pre + "q_proj.weight"].T), H, dk)) / math.sqrt(dk)
    k = l2_normalize(heads(branch("k", h @ p[pre + "k_proj.weight"].T), H, dk))
    v = heads(branch("v", h @ p[pre + "v_proj.weight"].T), HV, dv)
    q, k = q.repeat_interleave(HV // H, dim=1), k.repeat_interleave(HV // H, dim=1)   # GVA: hv -> hv // (HV / H)
    beta = torch.sigmoid(h @ p[pre + "b_proj.weight"].T).transpose(1, 2)             # [B, HV, N]
    g = (-torch.exp(p[pre + "A_log"]) * softplus(h @ p[pre + "a_proj.weight"].T + p[pre + "dt_bias"])).transpose(1, 2)
    return gdn_chunkwise(q, k, v, beta, g, starts, block) if fast else gdn_recurrent(q, k, v, beta, g, starts)


def rms_norm(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def rope(x, theta):
    """x [B, heads, N, d]; Llama rotate_half with global positions 0..N-1 (angles in float64)."""
    N, d = x.shape[2], x.shape[3]
    inv_freq = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = torch.arange(N, dtype=torch.float64)[:, None] * inv_freq[None, :]
    ang = torch.cat([ang, ang], dim=-1)
    cos, sin = torch.cos(ang).to(x.dtype), torch.sin(ang).to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def softmax_attention(q, k, v, same=None):
    """Causal, scale 1/sqrt(d); k, v already expanded to the query heads; same [B, N, N]: documents."""
    N, d = q.shape[2], q.shape[3]
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)
    mask = torch.ones(N, N, dtype=torch.bool).triu(1)
    if same is not None:
        mask = (mask | ~same)[:, None]                                   # [B, 1, N, N]
    return torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1) @ v


def forward(c, p, tokens, fast=False, doc_start=None, block=64):
    """tokens [B, N] int64 -> logits [B, N, V]. fast=True uses the chunkwise linear attention (blocks of `block`
    tokens). doc_start: the token that opens a document (attention never crosses documents), or None."""
    B, N = tokens.shape
    same = same_document(tokens, doc_start)
    D, H, Hkv, eps = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["rms_norm_eps"]
    d, la = D // H, c["linear_attention"]
    expanded = la["feature_map"] in EXPANDED_MAPS
    if same is not None and fast and "L" in c["layer_types"] and not expanded and la["decay"] != "gdn":
        raise UserError("documents run on the naive linear attention only (fast=False), except based/rebased/gdn")
    phi, lam = FEATURE_MAPS.get(la["feature_map"]), decays(c, H)
    heads = lambda t, n, w=d: t.view(B, N, n, w).transpose(1, 2)         # [B, n, N, w]
    merge = lambda t: t.transpose(1, 2).reshape(B, N, -1)
    x = p["model.embed_tokens.weight"][tokens]
    for i, kind in enumerate(c["layer_types"]):
        pre = f"model.layers.{i}."
        W = lambda name: p[pre + name + ".weight"]
        h = rms_norm(x, W("input_layernorm"), eps)
        if kind == "L" and la["decay"] == "gdn":
            # Gated DeltaNet (DELTA.md): short convs, l2, the delta rule with its log-gate; value heads of their own
            o = gdn_layer(c, p, pre + "self_attn.", h, (tokens == doc_start) if same is not None else None, fast, block)
        elif kind == "L" and expanded:
            # Based / Rebased (FEATURE_MAPS.md): raw q, k of f per head, no RoPE, no decay; phi expands to D';
            # o = n / (s + eps) over the same document, the token itself included
            f = la["feature_dim"]
            q, k = heads(h @ W("self_attn.q_proj").T, H, f), heads(h @ W("self_attn.k_proj").T, H, f)
            v = heads(h @ W("self_attn.v_proj").T, H)
            if la["feature_map"] == "based":
                fq, fk = based_features(q), based_features(k)
            else:                                                       # one gamma/beta for q, k, all heads
                gamma, beta = p[pre + "self_attn.feature_map.gamma"], p[pre + "self_attn.feature_map.beta"]
                fq, fk = rebased_features(q, gamma, beta), rebased_features(k, gamma, beta)
            if fast:
                starts = (tokens == doc_start) if same is not None else None
                o = normalized_linear_attention_chunkwise(fq, fk, v, la["normalizer_eps"], block, starts)
            else:
                o = normalized_linear_attention(fq, fk, v, la["normalizer_eps"], same)
        elif kind == "L":
            q, k, v = heads(phi(h @ W("self_attn.q_proj").T), H), heads(phi(h @ W("self_attn.k_proj").T), H), \
                heads(h @ W("self_attn.v_proj").T, H)
            if la["decay"] == "gla":
                z = (h @ W("self_attn.gk_proj.0").T) @ W("self_attn.gk_proj.1").T + p[pre + "self_attn.gk_proj.1.bias"]
                starts = (tokens == doc_start) if same is not None else None
                o = gla_naive(q, k, v, heads(F.logsigmoid(z) / la["gate_normalizer"], H), starts)
            else:
                o = linear_attention_chunkwise(q, k, v, lam, block) if fast else linear_attention_naive(q, k, v, lam, same)
        if kind == "L":                                                 # every linear kind alike (MODEL.md)
            if la["output_norm"]:
                o = rms_norm(o, W("self_attn.o_norm"), eps)
            o = merge(o)
            if la["output_gate"]:
                o = o * F.silu(h @ W("self_attn.g_proj").T)
        else:
            q = rope(heads(h @ W("self_attn.q_proj").T, H), c["rope_theta"])
            k = rope(heads(h @ W("self_attn.k_proj").T, Hkv), c["rope_theta"])
            v = heads(h @ W("self_attn.v_proj").T, Hkv)
            k, v = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)
            o = merge(softmax_attention(q, k, v, same))
        x = x + o @ W("self_attn.o_proj").T
        h = rms_norm(x, W("post_attention_layernorm"), eps)
        x = x + (F.silu(h @ W("mlp.gate_proj").T) * (h @ W("mlp.up_proj").T)) @ W("mlp.down_proj").T
    lm = p["model.embed_tokens.weight"] if c["tie_word_embeddings"] else p["lm_head.weight"]
    return rms_norm(x, p["model.norm.weight"], eps) @ lm.T


def loss_of(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def init_params(c, seed, std=0.02, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    p = {}
    for name, shape in param_shapes(c).items():
        r = torch.randn(shape, generator=g, dtype=torch.float64)
        p[name] = (1.0 + 0.1 * r) if len(shape) == 1 else std * r
        if name.endswith("feature_map.gamma") or name.endswith("feature_map.beta"):   # FEATURE_MAPS.md: 1 and 0
            p[name] = torch.ones(shape, dtype=torch.float64) if name.endswith("gamma") else \
                torch.zeros(shape, dtype=torch.float64)
        if name.endswith("self_attn.A_log"):            # DELTA.md (FLA): log(u), u = 16 (1 - U[0,1)) in (0, 16]
            p[name] = torch.log(16.0 * (1.0 - torch.rand(shape, generator=g, dtype=torch.float64)))
        if name.endswith("self_attn.dt_bias"):          # softplus^-1(dt), dt = exp(U(ln 1e-3, ln 0.1)) >= 1e-4
            u = torch.rand(shape, generator=g, dtype=torch.float64)
            dt = torch.exp(u * (math.log(0.1) - math.log(0.001)) + math.log(0.001)).clamp(min=1e-4)
            p[name] = dt + torch.log(-torch.expm1(-dt))
    return {k: v.to(dtype).requires_grad_(True) for k, v in p.items()}


# ------------------------------------------------------------------------------------------- data
def read_token_batch(path, batch, V):
    try:
        a = np.fromfile(path, dtype="<i4")
    except OSError as e:
        raise UserError(f"cannot read tokens {path}: {e}")
    if batch <= 0 or a.size % batch or a.size // batch < 2:
        raise UserError(f"tokens {path}: {a.size} int32 values do not form ({batch}, N+1) with N >= 1")
    if a.size and (a.min() < 0 or a.max() >= V):
        raise UserError(f"tokens {path}: token ids must lie in [0, {V}), found [{a.min()}, {a.max()}]")
    t = torch.from_numpy(a.astype(np.int64).reshape(batch, -1))
    return t[:, :-1], t[:, 1:]


def read_stream(path, fmt):
    try:
        if fmt == "text":
            return np.fromfile(path, dtype=np.uint8).astype(np.int64)
        hdr = np.fromfile(path, dtype="<i4", count=256)
        if hdr.size < 256 or hdr[0] != 20240520 or hdr[1] != 1:
            raise UserError(f"{path}: not an llm.c token shard (magic 20240520, version 1)")
        return np.fromfile(path, dtype="<u2", offset=1024, count=int(hdr[2])).astype(np.int64)
    except OSError as e:
        raise UserError(f"cannot read data {path}: {e}")


# ---------------------------------------------------------------------------------------- commands
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def cmd_grads(a):
    c, p = load_checkpoint(a.checkpoint, DTYPES[a.dtype])
    x, y = read_token_batch(a.tokens, a.batch, c["vocab_size"])
    logits = forward(c, p, x, doc_start=a.doc_start)
    loss = loss_of(logits, y)
    loss.backward()
    out = {"logits": logits, "loss": loss.reshape(1)}
    out.update({"grad." + k: v.grad for k, v in p.items()})
    write_safetensors(a.out, out, a.out_dtype, {"loss": repr(loss.item())})


def cmd_eval(a):
    c, p = load_checkpoint(a.checkpoint, DTYPES[a.dtype])
    s, N, K = read_stream(a.data, a.format), a.seq_len, a.batches
    if N <= 0 or K <= 0:
        raise UserError("--seq-len and --batches must be positive")
    if s.size < K * N + 1:
        raise UserError(f"{a.data}: {s.size} tokens, need at least batches*seq_len+1 = {K * N + 1}")
    if s[: K * N + 1].max() >= c["vocab_size"]:
        raise UserError(f"{a.data}: token id {s[: K * N + 1].max()} >= vocab_size {c['vocab_size']}")
    total = 0.0
    with torch.no_grad():
        for k0 in range(0, K, 8):
            w = torch.from_numpy(np.stack([s[k * N: k * N + N + 1] for k in range(k0, min(K, k0 + 8))]))
            logits = forward(c, p, w[:, :-1])
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1),
                                     reduction="sum").item()
    print(json.dumps({"loss": total / (K * N), "tokens": K * N}))


def make_optimizer(a, p):
    if a.decay_filter == "matrices":
        groups = [{"params": [v for v in p.values() if v.dim() >= 2]},
                  {"params": [v for v in p.values() if v.dim() < 2], "weight_decay": 0.0}]
    else:
        groups = [{"params": list(p.values())}]
    return torch.optim.AdamW(groups, lr=a.lr, betas=(a.beta1, a.beta2), eps=a.eps,
                             weight_decay=a.weight_decay, foreach=False)


def cmd_train(a):
    c, p = load_checkpoint(a.checkpoint, DTYPES[a.dtype])
    x, y = read_token_batch(a.tokens, a.batch, c["vocab_size"])
    opt, losses = make_optimizer(a, p), []
    for _ in range(a.steps):
        opt.zero_grad()
        loss = loss_of(forward(c, p, x), y)
        loss.backward()
        losses.append(loss.item())
        if a.clip > 0:
            torch.nn.utils.clip_grad_norm_(list(p.values()), a.clip)
        opt.step()
    if a.out:
        save_checkpoint(a.out, os.path.join(a.checkpoint, "config.json"), p)
    print(json.dumps({"losses": losses}))


def cmd_init(a):
    c = load_config(a.config)
    save_checkpoint(a.out, a.config, init_params(c, a.seed, a.std))


def blas_library():
    """The BLAS library torch uses: MKL where torch was built with it (PyPI's wheels link it in), else the one
    this process mapped (Debian's torch links libblas.so.3, an alternative Debian resolves)."""
    if peer.blas_info()["blas_info"] == "mkl":
        return {"blas": "MKL (linked into torch)", "reference": False}
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1] if "/" in line else ""
            if any(k in os.path.basename(path) for k in ("blas", "mkl", "blis")):
                real = os.path.realpath(path)
                # Debian's netlib reference BLAS lives in .../blas/; OpenBLAS in .../openblas-*/, BLIS in .../blis-*/
                return {"blas": real, "reference": "/blas/libblas.so" in real}
    return {"blas": "none found", "reference": False}


def cmd_blas(a):
    print(json.dumps(blas_library()))


def cmd_time_step(a):
    if a.seq_len <= 0 or a.batch <= 0 or a.repeats <= 0 or a.block < 0:
        raise UserError("--seq-len, --batch and --repeats must be positive, --block positive or 0 (by N)")
    torch.set_num_threads(a.threads or os.cpu_count())
    c = load_config(a.config)
    p = init_params(c, 0)
    g = torch.Generator().manual_seed(1)
    t = torch.randint(0, c["vocab_size"], (a.batch, a.seq_len + 1), generator=g)
    la = c["linear_attention"]
    if (la["feature_map"] in EXPANDED_MAPS or la["decay"] == "gdn") and "L" in c["layer_types"]:
        if a.compile == "on":
            raise UserError("time-step --compile on: based/rebased/gdn are timed on reference.py's own chunkwise "
                            "forward (tools/peer.py has no based/rebased/gdn), which is not compiled")
        r = time_reference_step(c, p, t, a.repeats, a.precision == "bf16", a.block or 64)
    else:
        r = peer.time_peer(c, decays(c, c["num_attention_heads"]), p, t, a.repeats, a.precision == "bf16",
                           a.block, a.compile, a.profile)
    print(json.dumps({**r, "threads": torch.get_num_threads(), "precision": a.precision, "torch": torch.__version__,
                      "python": sys.executable, **peer.blas_info(), **blas_library()}))


def time_reference_step(c, p, tokens, repeats, bf16, block):
    """time-step for what the peer (tools/peer.py) does not run (based/rebased, gdn): this file's own forward in its
    chunkwise form (fast=True, blocks of `block`), eager, otherwise as peer.time_peer times it (zero_grad,
    forward, backward, clip at 1, lasp's AdamW; median over `repeats` steps after a warm-up). Same JSON fields,
    with compile {"ran": false} and the reason."""
    x, y = tokens[:, :-1], tokens[:, 1:]
    opt, opt_kind = peer.adamw(p)
    params = list(p.values())

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = forward(c, p, x, fast=True, block=block)
        loss_of(logits.float(), y).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    step()                                                                       # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    eager = {"tokens_per_s": x.numel() / sec, "seconds_per_step": sec}
    core = "Gated DeltaNet's chunkwise WY form" if c["linear_attention"]["decay"] == "gdn" else \
        "chunkwise normalized linear attention"
    return {"formulation": f"reference.py's own forward: {core} (block {block}, a loop over blocks; tools/peer.py "
                           f"has no based/rebased/gdn), masked softmax, AdamW {opt_kind}",
            "block": block, "sdpa": False, "gqa": "repeat_interleave", "optimizer": opt_kind,
            "compile": {"ran": False, "reason": "based/rebased/gdn: reference.py's own forward, not compiled"},
            "eager": eager, "best": "eager", **eager}


PEER_CONFIGS = [  # small models for the peer's checks: every decay, GQA, tied or not, every option
    dict(vocab_size=11, hidden_size=24, intermediate_size=12, num_hidden_layers=3, num_attention_heads=6,
         num_key_value_heads=3, layer_types="LNL", rope_theta=10000.0,
         linear_attention=dict(feature_map="silu", decay="lightning")),
    dict(vocab_size=9, hidden_size=16, intermediate_size=10, num_hidden_layers=2, num_attention_heads=2,
         num_key_value_heads=1, layer_types="NL", tie_word_embeddings=True,
         linear_attention=dict(feature_map="elu1", decay="retention", output_norm=False, output_gate=False)),
    dict(vocab_size=13, hidden_size=16, intermediate_size=12, num_hidden_layers=2, num_attention_heads=4,
         layer_types="LL", linear_attention=dict(feature_map="relu", decay="none", output_gate=False)),
    dict(vocab_size=11, hidden_size=16, intermediate_size=12, num_hidden_layers=2, num_attention_heads=2,
         num_key_value_heads=1, layer_types="LN", linear_attention=dict(decay="gla", gate_low_rank=4)),
]


def peer_checks(check, variants, std=0.3):
    """The peer against the float64 model on PEER_CONFIGS (weights of this std, N = 37: a ragged last block of 8):
    loss and every gradient, for each (label, dtype, compiled, bf16, tolerance) in variants. fp32 and float64
    must agree in max|a-b| / max|b| per tensor; bf16 in lasp's normalized squared error (test_precision.cpp),
    within the tolerance or twice the error of this model itself under the same autocast, if larger."""
    for n, c in enumerate(PEER_CONFIGS):
        c = validate_config(json.loads(json.dumps(c)))
        p = init_params(c, 10 + n, std=std, dtype=torch.float64)
        tok = torch.randint(0, c["vocab_size"], (2, 38), generator=torch.Generator().manual_seed(n))
        loss = loss_of(forward(c, p, tok[:, :-1]), tok[:, 1:])
        grads = dict(zip(p, torch.autograd.grad(loss, list(p.values()))))
        for label, dtype, compiled, bf16, tol in variants:
            lam = decays(c, c["num_attention_heads"])
            by_max, by_sq = peer.check(c, lam, p, tok, loss.item(), grads, dtype, 8, compiled, bf16)
            (err, worst), measure = (by_sq, "normalized squared error") if bf16 else (by_max, "error")
            if bf16:
                q = {k: v.detach().float().requires_grad_(True) for k, v in p.items()}
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    logits = forward(c, q, tok[:, :-1])
                own = dict(zip(q, torch.autograd.grad(loss_of(logits.float(), tok[:, 1:]), list(q.values()))))
                tol = max(tol, 2 * max(((own[k].double() - g) ** 2).sum().item() / (g * g).sum().item()
                                       for k, g in grads.items()))
            check(err <= tol, f"peer {label} == model (float64), config {n} ({c['layer_types']}, "
                               f"{c['linear_attention']['decay']}): {measure} {err:.1e} at {worst} "
                               f"(tolerance {tol:.0e})")


def cmd_peer_selftest(a):
    t0, failures = time.perf_counter(), []
    def check(ok, what):
        print(("ok    " if ok else "FAIL  ") + what, flush=True)
        if not ok:
            failures.append(what)
    print(f"torch {torch.__version__} ({sys.executable}), SDPA {peer.HAS_SDPA}, torch.compile {peer.HAS_COMPILE}")
    variants = [("float64 eager", torch.float64, False, False, 1e-10),
                ("fp32 eager", torch.float32, False, False, 1e-4)]
    if peer.HAS_COMPILE:
        variants.append(("fp32 compiled", torch.float32, True, False, 1e-4))
    peer_checks(check, variants)
    # bf16 on weights of the size training sees (std 0.05, as test_precision.cpp; at 0.3 bf16 loses the gradients)
    variants = [("bf16 autocast eager", torch.float32, False, True, 1e-2)]
    if peer.HAS_COMPILE:
        variants.append(("bf16 autocast compiled", torch.float32, True, True, 1e-2))
    peer_checks(check, variants, std=0.05)
    print(f"peer-selftest: {len(failures)} failure(s), {time.perf_counter() - t0:.2f} s")
    return 1 if failures else 0


def gdn_checks(check, base):
    """Selftest 3c: Gated DeltaNet (DELTA.md), float64. The chunkwise WY form == the token recurrence (forward and
    gradients; documents, d_k != d_v, ragged chunks); the short conv == nn.Conv1d and, with documents, == each
    document alone; in the model: autograd == central finite differences for every tensor of the GDN layer (A_log,
    dt_bias, the conv weights included; GVA, documents, conv_size 4 and 0), chunkwise model == token model, packed
    documents == each alone, GVA == the same model with q/k heads duplicated, conv_size 1 of weight 1 == conv_size 0;
    config validation; FLA's init and the decay filter; init -> grads through the CLI."""
    t1, f64 = time.perf_counter(), torch.float64
    gen = torch.Generator().manual_seed(26)
    rnd = lambda *shape: torch.randn(*shape, generator=gen, dtype=f64)
    # 1. chunkwise (WY) == recurrence: HV 3 heads, d_k 5, d_v 3, N 37, starts at chunk edges, inside, in a row
    B, HV, N, dk, dv = 2, 3, 37, 5, 3
    q, v = rnd(B, HV, N, dk).requires_grad_(), rnd(B, HV, N, dv).requires_grad_()
    kr, braw, graw = rnd(B, HV, N, dk).requires_grad_(), rnd(B, HV, N).requires_grad_(), rnd(B, HV, N).requires_grad_()
    starts = torch.zeros(B, N, dtype=torch.bool)
    starts[0, [0, 7, 8, 15, 16, 30]] = True
    starts[1, [5, 6, 23, 36]] = True
    args = (q, kr, v, braw, graw)
    def run(fn, st, *extra):
        o = fn(q, l2_normalize(kr), v, torch.sigmoid(braw), -F.softplus(graw), st, *extra)
        w = torch.cos(torch.arange(o.numel(), dtype=f64)).view_as(o)    # a fixed, uneven output gradient
        return o, torch.autograd.grad((o * w).sum(), args)
    for st in (None, starts):
        o1, g1 = run(gdn_recurrent, st)
        err = max(max((run(gdn_chunkwise, st, blk)[0] - o1).abs().max().item() / o1.abs().max().item(),
                      max(((a - b).abs().max() / b.abs().max()).item()
                          for a, b in zip(run(gdn_chunkwise, st, blk)[1], g1))) for blk in (1, 4, 8, 64))
        check(err < 1e-12, f"gdn: chunkwise WY form (chunks of 1, 4, 8, 64) == token recurrence, d_k 5, d_v 3, "
                           f"documents {'on' if st is not None else 'off'}: forward and dq, dk, dv, dbeta, dg, "
                           f"worst {err:.1e} (relative to max)")
    # 2. the short conv: == nn.Conv1d (groups = channels, padding K-1, first N outputs); documents == alone
    errs = []
    for K, n in ((1, 9), (2, 9), (4, 9), (4, 3)):
        x, w = rnd(2, n, 5), rnd(5, 1, K)
        ref = F.conv1d(x.transpose(1, 2), w, groups=5, padding=K - 1)[..., :n].transpose(1, 2)
        errs.append((short_conv(x, w) - ref).abs().max().item())
    x, w = rnd(2, 15, 5), rnd(5, 1, 4)
    st = torch.zeros(2, 15, dtype=torch.bool)
    st[0, [4, 5, 11]] = True
    y = short_conv(x, w, st)
    ok = all(torch.allclose(y[:1, a:e], short_conv(x[:1, a:e], w), rtol=0, atol=1e-15)
             for a, e in ((0, 4), (4, 5), (5, 11), (11, 15))) and torch.equal(y[1], short_conv(x, w)[1])
    check(max(errs) < 1e-14 and ok, f"gdn: short conv == nn.Conv1d (K 1, 2, 4; N 3 < K), worst {max(errs):.1e}; with "
                                    f"documents == each document alone")
    # 3. the model: autograd == central differences (Richardson-extrapolated, h 1e-4: error O(h^4)) for the GDN
    #    layer's tensors (all entries of A_log and dt_bias, 8 of the others, and one random direction over each
    #    whole tensor), on a GVA model with documents and conv 4 and on a plain one with conv 0
    cases = [("GVA (H 2, HV 4), d_k 3, d_v 5, conv 4, documents, norm and gate",
              dict(head_k_dim=3, head_v_dim=5, num_v_heads=4, conv_size=4), True, "LN"),
             ("H = HV = 2, d_k = d_v = 8, conv 0, gate only", dict(conv_size=0, output_norm=False), False, "NL")]
    for what, la, docs, lt in cases:
        c = validate_config(dict(base, hidden_size=16, layer_types=lt, linear_attention=dict(decay="gdn", **la)))
        p = init_params(c, 7, std=0.3, dtype=f64)
        tok = torch.randint(1, c["vocab_size"], (2, 10), generator=gen)
        if docs:
            tok[0, [0, 3, 4, 8]] = 0
            tok[1, [6]] = 0
        ds = 0 if docs else None
        li = lt.index("L")
        names = [k for k in p if k.startswith(f"model.layers.{li}.self_attn.")]
        loss_at = lambda pp: loss_of(forward(c, pp, tok[:, :-1], doc_start=ds), tok[:, 1:])
        grads = dict(zip(names, torch.autograd.grad(loss_at(p), [p[k] for k in names])))
        worst, at = 0.0, ""
        scale = max(g.abs().max().item() for g in grads.values())       # the layer's largest gradient entry
        with torch.no_grad():
            for k in names:
                flat = p[k].detach().clone().view(-1)
                idx = torch.randperm(flat.numel(), generator=gen)[:8].tolist()
                if k.endswith("A_log") or k.endswith("dt_bias"):
                    idx = list(range(flat.numel()))
                dirs = [torch.zeros_like(flat).index_fill_(0, torch.tensor([j]), 1.0) for j in idx]
                dirs.append(torch.randn(flat.shape, generator=gen, dtype=f64))   # and one direction over all
                fd = []
                for u in dirs:                                           # Richardson: (4 D(h/2) - D(h)) / 3
                    cd = []
                    for h in (1e-4, 5e-5):
                        vals = [loss_at(dict(p, **{k: (flat + step * u).view_as(p[k])})).item() for step in (h, -h)]
                        cd.append((vals[0] - vals[1]) / (2 * h))
                    fd.append((4 * cd[1] - cd[0]) / 3)
                an = torch.stack([grads[k].reshape(-1) @ u for u in dirs])
                err = max(abs(a - b.item()) / (u.norm().item() * scale) for a, b, u in zip(fd, an, dirs))
                if err > worst:
                    worst, at = err, k.split("self_attn.")[1]
        has = all(any(k.endswith(n) for k in names) for n in ("A_log", "dt_bias", "a_proj.weight", "b_proj.weight"))
        conv = [k for k in names if "conv1d" in k]
        check(worst < 1e-8 and has and len(conv) == (3 if la.get("conv_size") else 0),
              f"gdn model: autograd == central differences, {what}: {len(names)} tensors "
              f"({', '.join(k.split('self_attn.')[1] for k in names)}), worst |fd - autograd| {worst:.1e} at {at} "
              f"(in units of |direction| x the layer's largest gradient, {scale:.1e})")
        with torch.no_grad():
            naive = forward(c, p, tok, doc_start=ds)
            err = max((forward(c, p, tok, fast=True, block=blk, doc_start=ds) - naive).abs().max().item()
                      for blk in (3, 4, 64))
            check(err < 1e-12, f"gdn model: chunkwise (blocks of 3, 4, 64) == token recurrence, {what}: {err:.1e}")
            if docs:
                ok = all(torch.allclose(naive[:1, a:e], forward(c, p, tok[:1, a:e]), rtol=1e-10, atol=1e-12)
                         for a, e in ((0, 3), (3, 4), (4, 8), (8, 10)))
                check(ok and not torch.allclose(naive, forward(c, p, tok)),
                      f"gdn model: packed documents == each document alone (conv and state restart), {what}")
            t2 = tok.clone(); t2[:, -1] = (t2[:, -1] + 1) % c["vocab_size"]
            l2 = forward(c, p, t2, doc_start=ds)
            check(torch.equal(naive[:, :-1], l2[:, :-1]) and not torch.equal(naive[:, -1], l2[:, -1]),
                  f"gdn model: causality, {what}")
    with torch.no_grad():
        # GVA: value head hv reads q/k head hv // (HV / H): H 2, HV 4 == H 4, HV 4 with q/k rows (and conv) doubled
        gva = lambda H: validate_config(dict(base, hidden_size=16, layer_types="L", num_hidden_layers=1,
                                             num_attention_heads=H, num_key_value_heads=H, linear_attention=dict(
                                                 decay="gdn", head_k_dim=3, head_v_dim=5, num_v_heads=4)))
        c2, c4 = gva(2), gva(4)
        p2 = init_params(c2, 8, std=0.3, dtype=f64)
        dup = lambda t: t.view(2, 3, *t.shape[1:]).repeat_interleave(2, dim=0).reshape(12, *t.shape[1:])
        p4 = {k: dup(t) if any(n in k for n in ("q_proj", "k_proj", "q_conv1d", "k_conv1d")) else t
              for k, t in p2.items()}
        tok = torch.randint(0, c2["vocab_size"], (2, 9), generator=gen)
        err = (forward(c2, p2, tok) - forward(c4, p4, tok)).abs().max().item()
        check(err < 1e-13, f"gdn: GVA (H 2, HV 4) == H 4 with q/k heads 0 0 1 1 duplicated: {err:.1e}")
        # conv_size 1 of weight 1 is the identity: == conv_size 0
        c0 = validate_config(dict(base, hidden_size=16, linear_attention=dict(decay="gdn", conv_size=0)))
        c1 = validate_config(dict(base, hidden_size=16, linear_attention=dict(decay="gdn", conv_size=1)))
        p0 = init_params(c0, 9, std=0.3, dtype=f64)
        p1 = dict(p0, **{k: torch.ones(s, dtype=f64) for k, s in param_shapes(c1).items() if "conv1d" in k})
        check(set(p1) == set(param_shapes(c1)) and torch.allclose(forward(c0, p0, tok), forward(c1, p1, tok),
                                                                    rtol=0, atol=1e-14),
              "gdn: conv_size 1 with weights 1 == conv_size 0 (no conv tensors)")
    # 4. config: defaults; refusals name the key, what was expected and what was found
    la = validate_config(dict(base, linear_attention=dict(decay="gdn")))["linear_attention"]
    check((la["head_k_dim"], la["head_v_dim"], la["num_v_heads"], la["conv_size"]) == (6, 6, 2, 4),
          "gdn config: head_k_dim, head_v_dim absent -> d, num_v_heads -> num_attention_heads, conv_size -> 4")
    def refused(la, words):
        return config_refused(base, la, words)
    bad = [(dict(decay="gdn", feature_map="elu1"), ["feature_map", "'elu1'", "'silu'", "'gdn'"]),
           (dict(decay="gdn", feature_map="based"), ["feature_map", "'based'", "'silu'"]),
           (dict(decay="gdn", num_v_heads=3), ["num_v_heads 3", "multiple", "num_attention_heads 2"]),
           (dict(decay="gdn", conv_size=-1), ["conv_size", ">= 0", "-1"]),
           (dict(decay="gdn", head_k_dim=0), ["head_k_dim", ">= 1", "0"]),
           (dict(decay="gdn", head_v_dim=2.0), ["head_v_dim", "2.0"]),
           (dict(decay="gdn", num_v_heads=True), ["num_v_heads", "True"]),
           (dict(decay="gla", conv_size=4), ["conv_size", "'gdn'", "'gla'"]),
           (dict(head_k_dim=8), ["head_k_dim", "'gdn'", "'none'"]),
           (dict(decay="gdm"), ["'gdm'", "'gdn'"])]
    check(all(refused(la, words) for la, words in bad),
          "gdn config refused: feature_map elu1 / based, num_v_heads 3 with 2 heads, conv_size -1, head_k_dim 0, "
          "head_v_dim 2.0, num_v_heads true, conv_size with decay gla, head_k_dim with no decay, decay 'gdm'")
    # 5. init (FLA's recipe) and the decay filter; init -> grads through the CLI with documents
    cfg = dict(vocab_size=13, hidden_size=32, intermediate_size=24, num_hidden_layers=3, num_attention_heads=2,
               layer_types="LLN", rope_theta=10000.0,
               linear_attention=dict(decay="gdn", head_k_dim=8, head_v_dim=12, num_v_heads=4, conv_size=4))
    c = validate_config(json.loads(json.dumps(cfg)))
    p = init_params(c, 11, dtype=f64)
    A = [torch.exp(p[f"model.layers.{i}.self_attn.A_log"]) for i in (0, 1)]
    dt = [F.softplus(p[f"model.layers.{i}.self_attn.dt_bias"]) for i in (0, 1)]
    shapes = {k.split("self_attn.")[1]: list(v.shape) for k, v in p.items()
              if k.startswith("model.layers.0.self_attn.")}
    want = {"q_proj.weight": [16, 32], "k_proj.weight": [16, 32], "v_proj.weight": [48, 32], "a_proj.weight": [4, 32],
            "b_proj.weight": [4, 32], "A_log": [4], "dt_bias": [4], "q_conv1d.weight": [16, 1, 4],
            "k_conv1d.weight": [16, 1, 4], "v_conv1d.weight": [48, 1, 4], "g_proj.weight": [48, 32],
            "o_norm.weight": [12], "o_proj.weight": [32, 48]}
    opt = make_optimizer(argparse.Namespace(decay_filter="matrices", lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8,
                                            weight_decay=0.1), p)
    no_decay = {id(t) for gr in opt.param_groups if gr["weight_decay"] == 0 for t in gr["params"]}
    ok = shapes == want and all(((a > 0) & (a <= 16)).all() for a in A) and not torch.equal(A[0], A[1]) \
        and all(((x >= 1e-3 - 1e-12) & (x <= 0.1 + 1e-12)).all() for x in dt) \
        and all(id(t) in no_decay for k, t in p.items() if k.endswith("A_log") or k.endswith("dt_bias")) \
        and not any(id(t) in no_decay for k, t in p.items() if "conv1d" in k or k.endswith("proj.weight"))
    check(ok, "gdn init: FLA's names and shapes, exp(A_log) in (0, 16], softplus(dt_bias) in [1e-3, 0.1]; "
              "--decay-filter matrices: A_log and dt_bias without weight decay, conv weights and projections with")
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(cfg, f)
        main(["init", "--config", os.path.join(tmp, "config.json"), "--out", os.path.join(tmp, "ck"), "--seed", "5"])
        tok = np.arange(2 * 13, dtype="<i4") * 7 % 13
        tok.tofile(os.path.join(tmp, "tok.bin"))
        main(["grads", "--checkpoint", os.path.join(tmp, "ck"), "--tokens", os.path.join(tmp, "tok.bin"), "--batch",
              "2", "--out", os.path.join(tmp, "g.safetensors"), "--out-dtype", "F64", "--doc-start", "3"])
        g = read_safetensors(os.path.join(tmp, "g.safetensors"))
        c, p = load_checkpoint(os.path.join(tmp, "ck"), f64)
        t = torch.from_numpy(tok.astype(np.int64).reshape(2, 13))
        loss = loss_of(forward(c, p, t[:, :-1], doc_start=3), t[:, 1:])
        loss.backward()
        ok = set(g) == {"logits", "loss"} | {"grad." + k for k in p} and g["logits"].shape == (2, 12, 13) \
            and abs(g["loss"].item() - loss.item()) < 1e-12 \
            and all(torch.equal(g["grad." + k], v.grad) for k, v in p.items()) \
            and all(g["grad." + k].abs().max() > 0 for k in p if k.startswith("model.layers.0.self_attn."))
        check(ok, f"gdn: init -> grads (--doc-start) -> read back, {len(p)} tensors, every GDN gradient nonzero")
    print(f"(gdn checks: {time.perf_counter() - t1:.2f} s)")


def cmd_selftest(a):
    t0, failures = time.perf_counter(), []
    def check(ok, what):
        print(("ok    " if ok else "FAIL  ") + what)
        if not ok:
            failures.append(what)
    torch.manual_seed(0)
    # 1. naive vs chunkwise linear attention (forward and gradients), every decay, ragged last block.
    for decay in (x for x in DECAYS if x != "gdn"):                   # gdn: its own checks (3c)
        lam = decays({"linear_attention": {"decay": decay}}, 3)
        q, k, v = (torch.randn(2, 3, 37, 5, dtype=torch.float64, requires_grad=True) for _ in range(3))
        o1 = linear_attention_naive(q, k, v, lam)
        g1 = torch.autograd.grad((o1 * o1).sum(), (q, k, v))
        o2 = linear_attention_chunkwise(q, k, v, lam, block=8)
        g2 = torch.autograd.grad((o2 * o2).sum(), (q, k, v))
        ok = torch.allclose(o1, o2, rtol=1e-10, atol=1e-10) and all(
            torch.allclose(x, y, rtol=1e-10, atol=1e-10) for x, y in zip(g1, g2))
        check(ok, f"naive == chunkwise linear attention, decay={decay}")
    # 1b. Based and Rebased (FEATURE_MAPS.md): the compact maps' dot products are the kernel formulas, and the
    #     chunkwise augmented state ([v | 1], D' x (d+1)) equals the naive normalized attention (forward and
    #     gradients, gamma and beta included), ragged last block; documents: the naive form packed == alone.
    for f in (1, 3, 4, 16):
        gamma, beta = 1 + 0.3 * torch.randn(f, dtype=torch.float64), 0.3 * torch.randn(f, dtype=torch.float64)
        x, z = torch.randn(2, 5, f, dtype=torch.float64), torch.randn(2, 7, f, dtype=torch.float64)
        sc = x @ z.transpose(-1, -2) / math.sqrt(f)
        ok_based = based_features(x).shape[-1] == 1 + f + f * (f + 1) // 2 and torch.allclose(
            based_features(x) @ based_features(z).transpose(-1, -2), 1 + sc + sc * sc / 2, rtol=1e-13, atol=1e-13)
        ln = lambda t: torch.nn.functional.layer_norm(t, (f,), gamma, beta, eps=1e-6)
        ok_rebased = rebased_features(x, gamma, beta).shape[-1] == f * (f + 1) // 2 and torch.allclose(
            rebased_features(x, gamma, beta) @ rebased_features(z, gamma, beta).transpose(-1, -2),
            (ln(x) @ ln(z).transpose(-1, -2)) ** 2 / f, rtol=1e-13, atol=1e-13)
        check(ok_based and ok_rebased, f"based and rebased: compact dot products == kernel formulas, f={f}")
    for kind in ("based", "rebased"):
        f, d = 4, 3
        q, k = (torch.randn(2, 3, 37, f, dtype=torch.float64, requires_grad=True) for _ in range(2))
        v = torch.randn(2, 3, 37, d, dtype=torch.float64, requires_grad=True)
        gamma = (1 + 0.3 * torch.randn(f, dtype=torch.float64)).requires_grad_()
        beta = (0.3 * torch.randn(f, dtype=torch.float64)).requires_grad_()
        phi = (lambda t: based_features(t)) if kind == "based" else (lambda t: rebased_features(t, gamma, beta))
        args = (q, k, v, gamma, beta)
        o1 = normalized_linear_attention(phi(q), phi(k), v, 1e-10)
        g1 = torch.autograd.grad((o1 * o1).sum(), args, allow_unused=True)
        o2 = normalized_linear_attention_chunkwise(phi(q), phi(k), v, 1e-10, block=8)
        g2 = torch.autograd.grad((o2 * o2).sum(), args, allow_unused=True)
        ok = torch.allclose(o1, o2, rtol=1e-10, atol=1e-10) and all(
            (x is None and y is None) or torch.allclose(x, y, rtol=1e-10, atol=1e-10) for x, y in zip(g1, g2))
        check(ok, f"naive == chunkwise augmented state ([v | 1]), {kind}")
        with torch.no_grad():
            tok = torch.randint(1, 5, (2, 37))
            tok[:, [0, 9, 10, 30]] = 0
            packed = normalized_linear_attention(phi(q), phi(k), v, 1e-10, same_document(tok, 0))
            ok = all(torch.allclose(packed[:, :, s:e], normalized_linear_attention(
                phi(q[:, :, s:e]), phi(k[:, :, s:e]), v[:, :, s:e], 1e-10), rtol=1e-12, atol=1e-12)
                for s, e in ((0, 9), (9, 10), (10, 30), (30, 37)))
            check(ok, f"normalized attention: packed documents == each document alone, {kind}")
        # the chunkwise form with documents (starts mid-block, on a block's first and last token, two in a row,
        # a row whose first document has no start token) == the naive form with the same-document mask
        tok = torch.randint(1, 5, (2, 37))
        tok[0, [0, 7, 8, 15, 16, 30]] = 0
        tok[1, [5, 6, 23]] = 0
        same, starts = same_document(tok, 0), tok == 0
        o1 = normalized_linear_attention(phi(q), phi(k), v, 1e-10, same)
        g1 = torch.autograd.grad((o1 * o1).sum(), args, allow_unused=True)
        o2 = normalized_linear_attention_chunkwise(phi(q), phi(k), v, 1e-10, block=8, starts=starts)
        g2 = torch.autograd.grad((o2 * o2).sum(), args, allow_unused=True)
        ok = torch.allclose(o1, o2, rtol=1e-10, atol=1e-10) and all(
            (x is None and y is None) or torch.allclose(x, y, rtol=1e-10, atol=1e-10) for x, y in zip(g1, g2))
        check(ok, f"naive == chunkwise augmented state with documents (state reset at starts), {kind}")
    # 2. gradcheck of the whole model on tiny configs (all parameters of the first, a few of the second).
    tiny = [dict(vocab_size=11, hidden_size=8, intermediate_size=12, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, layer_types="LN", rope_theta=10000.0, tie_word_embeddings=False,
                 linear_attention=dict(feature_map="silu", decay="lightning", output_norm=True, output_gate=True)),
            dict(vocab_size=7, hidden_size=8, intermediate_size=6, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, layer_types="NL", tie_word_embeddings=True,
                 linear_attention=dict(feature_map="elu1", decay="retention", output_norm=False, output_gate=False))]
    for n, c in enumerate(tiny):
        c = validate_config(c)
        p = init_params(c, n, std=0.3, dtype=torch.float64)
        tok = torch.randint(0, c["vocab_size"], (2, 6))
        names = list(p) if n == 0 else [k for k in p if "layers.0.self_attn" in k or "layers.1.self_attn.q" in k]
        def f(*ws):
            pp = dict(p, **dict(zip(names, ws)))
            return loss_of(forward(c, pp, tok[:, :-1]), tok[:, 1:])
        ok = torch.autograd.gradcheck(f, tuple(p[k] for k in names), eps=1e-6, atol=1e-7, raise_exception=False)
        check(ok, f"gradcheck whole model, config {n} ({c['layer_types']}, {len(names)} tensors)")
        # causality: changing the last input token changes no earlier logits
        with torch.no_grad():
            t2 = tok[:, :-1].clone(); t2[:, -1] = (t2[:, -1] + 1) % c["vocab_size"]
            l1, l2 = forward(c, p, tok[:, :-1]), forward(c, p, t2)
            check(torch.equal(l1[:, :-1], l2[:, :-1]) and not torch.equal(l1[:, -1], l2[:, -1]),
                  f"causality, config {n}")
            check(torch.allclose(l1, forward(c, p, tok[:, :-1], fast=True), rtol=1e-10, atol=1e-12),
                  f"model naive == model chunkwise, config {n}")
    # 3. documents: each document's logits in a packed sequence equal its logits run alone (the mask is
    #    relative: RoPE and the decays depend on distances only), and without the mask they do not.
    c = validate_config(dict(tiny[0], layer_types="LNLN", num_hidden_layers=4))
    p = init_params(c, 5, std=0.3, dtype=torch.float64)
    with torch.no_grad():
        tok = torch.randint(1, c["vocab_size"], (1, 15))
        for at in (0, 4, 5, 11):
            tok[0, at] = 0
        packed = forward(c, p, tok, doc_start=0)
        ok = all(torch.allclose(packed[:, s:e], forward(c, p, tok[:, s:e]), rtol=1e-10, atol=1e-12)
                 for s, e in ((0, 4), (4, 5), (5, 11), (11, 15)))
        check(ok and not torch.allclose(forward(c, p, tok)[:, 5:11], forward(c, p, tok[:, 5:11])),
              "packed documents == each document alone")
    # 3b. Based and Rebased in the model (FEATURE_MAPS.md), float64, f = 4 and f = d = 6, with and without
    #     documents and the output norm: autograd == finite differences (gradcheck) for layer 0's q_proj, k_proj,
    #     feature_map.gamma and .beta (rebased; moved off their init 1 and 0), o_norm; the chunkwise model
    #     (blocks of 4 and 3, documents across block edges) == the naive one; packed documents == alone.
    t1 = time.perf_counter()
    base = dict(vocab_size=7, hidden_size=12, intermediate_size=6, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, layer_types="LN", rope_theta=10000.0)
    for kind in EXPANDED_MAPS:
        for f in (4, 6):
            for docs, norm in ((True, f == 4), (False, f != 4)):
                c = validate_config(dict(base, linear_attention=dict(feature_map=kind, feature_dim=f, output_norm=norm)))
                p = init_params(c, f, std=0.3, dtype=torch.float64)
                if kind == "rebased":
                    with torch.no_grad():
                        p["model.layers.0.self_attn.feature_map.gamma"].add_(0.3 * torch.randn(f, dtype=torch.float64))
                        p["model.layers.0.self_attn.feature_map.beta"].add_(0.3 * torch.randn(f, dtype=torch.float64))
                tok = torch.randint(1, c["vocab_size"], (2, 12))
                if docs:
                    tok[0, [0, 3, 4, 8]] = 0
                    tok[1, [5]] = 0
                ds = 0 if docs else None
                names = [k for k in p if k.startswith("model.layers.0.self_attn.") and
                         any(w in k for w in ("q_proj", "k_proj", "feature_map", "o_norm"))]
                def loss(*ws):
                    return loss_of(forward(c, dict(p, **dict(zip(names, ws))), tok[:, :-1], doc_start=ds), tok[:, 1:])
                ok = torch.autograd.gradcheck(loss, tuple(p[k] for k in names), eps=1e-6, atol=1e-7,
                                              raise_exception=False)
                what = f"{kind}, f={f}, documents {'on' if docs else 'off'}, output_norm {'on' if norm else 'off'}"
                check(ok and (kind == "based" or any("gamma" in k for k in names)),
                      f"gradcheck {what}: {', '.join(k.split('self_attn.')[1] for k in names)}")
                with torch.no_grad():
                    naive = forward(c, p, tok, doc_start=ds)
                    ok = all(torch.allclose(naive, forward(c, p, tok, fast=True, block=b, doc_start=ds),
                                            rtol=1e-10, atol=1e-12) for b in (3, 4))
                    check(ok, f"model naive == model chunkwise (blocks of 3 and 4), {what}")
                    if docs:
                        ok = all(torch.allclose(naive[:1, s:e], forward(c, p, tok[:1, s:e]), rtol=1e-10, atol=1e-12)
                                 for s, e in ((0, 3), (3, 4), (4, 8), (8, 12)))
                        check(ok and not torch.allclose(naive, forward(c, p, tok)),
                              f"packed documents == each document alone, {what}")
    # config validation: based/rebased refuse a decay; an element-wise map refuses feature_dim != d; feature_dim
    # and normalizer_eps must be valid; absent keys take f = d and 1e-10
    def refused(la, words):
        return config_refused(base, la, words)
    check(refused(dict(feature_map="based", decay="lightning"), ["linear_attention.decay", "'lightning'", "'based'"])
          and refused(dict(feature_map="rebased", decay="gla"), ["linear_attention.decay", "'gla'", "'rebased'"]),
          "config: decay 'lightning' with based (and 'gla' with rebased) refused, naming the key and value")
    check(all(refused(dict(feature_map=m, feature_dim=4), ["linear_attention.feature_dim", "4", repr(m)])
              for m in FEATURE_MAPS) and all(validate_config(dict(base, linear_attention=dict(
                  feature_map=m, feature_dim=6))) for m in FEATURE_MAPS),
          "config: element-wise maps refuse feature_dim 4 != d = 6 (and take feature_dim = d)")
    check(all(refused(dict(feature_map="based", feature_dim=v), ["linear_attention.feature_dim", "positive integer"])
              for v in (0, -2, 4.0, "4", True)) and all(refused(dict(feature_map="rebased", normalizer_eps=v),
              ["linear_attention.normalizer_eps"]) for v in (-1e-10, "1e-10", float("nan"), None)),
          "config: feature_dim 0, -2, 4.0, '4', true and normalizer_eps -1e-10, '1e-10', NaN, null refused")
    la = validate_config(dict(base, linear_attention=dict(feature_map="rebased")))["linear_attention"]
    check(la["feature_dim"] == 6 and la["normalizer_eps"] == 1e-10 and la["decay"] == "none",
          "config: feature_dim absent -> d, normalizer_eps absent -> 1e-10")
    print(f"(based/rebased checks: {time.perf_counter() - t1:.2f} s)")
    gdn_checks(check, base)
    # 4. round trip through files: init -> grads -> read back; and the CLI's error path.
    with tempfile.TemporaryDirectory() as tmp:
        cfg = os.path.join(tmp, "config.json")
        with open(cfg, "w") as f:
            json.dump(dict(tiny[0], layer_types="LNL", num_hidden_layers=3), f)
        run = lambda *args: main(list(args))
        run("init", "--config", cfg, "--out", os.path.join(tmp, "ck"), "--seed", "3")
        np.arange(2 * 9, dtype="<i4").__mod__(11).tofile(os.path.join(tmp, "tok.bin"))
        run("grads", "--checkpoint", os.path.join(tmp, "ck"), "--tokens", os.path.join(tmp, "tok.bin"),
            "--batch", "2", "--out", os.path.join(tmp, "g.safetensors"), "--out-dtype", "F64")
        g = read_safetensors(os.path.join(tmp, "g.safetensors"))
        c, p = load_checkpoint(os.path.join(tmp, "ck"), torch.float64)
        tok = torch.from_numpy(np.arange(18).reshape(2, 9) % 11)
        loss = loss_of(forward(c, p, tok[:, :-1]), tok[:, 1:])
        loss.backward()
        ok = set(g) == {"logits", "loss"} | {"grad." + k for k in p} and g["logits"].shape == (2, 8, 11) \
            and abs(g["loss"].item() - loss.item()) < 1e-12 \
            and all(torch.equal(g["grad." + k], v.grad) for k, v in p.items())
        check(ok, "init -> grads -> read back round trip")
        # rebased through the CLI: init gives gamma 1 and beta 0, grads writes their gradients
        with open(cfg, "w") as f:
            json.dump(dict(base, layer_types="LNL", num_hidden_layers=3,
                           linear_attention=dict(feature_map="rebased", feature_dim=4)), f)
        run("init", "--config", cfg, "--out", os.path.join(tmp, "rb"), "--seed", "4")
        np.arange(2 * 9, dtype="<i4").__mod__(7).tofile(os.path.join(tmp, "tok7.bin"))
        run("grads", "--checkpoint", os.path.join(tmp, "rb"), "--tokens", os.path.join(tmp, "tok7.bin"),
            "--batch", "2", "--out", os.path.join(tmp, "rg.safetensors"), "--out-dtype", "F64", "--doc-start", "3")
        g, w = read_safetensors(os.path.join(tmp, "rg.safetensors")), read_safetensors(os.path.join(tmp, "rb", "model.safetensors"))
        fm = [f"model.layers.{i}.self_attn.feature_map.{n}" for i in (0, 2) for n in ("gamma", "beta")]
        ok = all(torch.equal(w[k], torch.ones(4) if k.endswith("gamma") else torch.zeros(4)) for k in fm) \
            and all(g["grad." + k].shape == (4,) and g["grad." + k].abs().max() > 0 for k in fm) \
            and list(w["model.layers.0.self_attn.q_proj.weight"].shape) == [8, 12] \
            and "model.layers.1.self_attn.feature_map.gamma" not in w
        check(ok, "rebased: init -> gamma 1, beta 0; grads (documents) writes grad.*.feature_map.gamma and .beta")
        with open(cfg, "w") as f:
            json.dump(dict(tiny[0], layer_types="LX"), f)
        print("(an error message is expected next)")
        check(run("init", "--config", cfg, "--out", os.path.join(tmp, "bad"), "--seed", "0") == 2,
              "bad config exits with 2")
    # 5. the peer of bench train --compare-pytorch (tools/peer.py, eager) computes the same model.
    peer_checks(check, [("float64", torch.float64, False, False, 1e-10), ("fp32", torch.float32, False, False, 1e-4)])
    print(f"selftest: {len(failures)} failure(s), {time.perf_counter() - t0:.2f} s")
    return 1 if failures else 0


# -------------------------------------------------------------------------------------------- main
def parse_args(argv):
    ap = argparse.ArgumentParser(prog="reference.py", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    def model_cmd(name, fn):
        s = sub.add_parser(name)
        s.add_argument("--checkpoint", required=True)
        s.add_argument("--dtype", choices=list(DTYPES), default="float64")
        s.set_defaults(fn=fn)
        return s
    s = model_cmd("grads", cmd_grads)
    s.add_argument("--tokens", required=True); s.add_argument("--batch", type=int, default=1)
    s.add_argument("--out", required=True); s.add_argument("--out-dtype", choices=["F32", "F64"], default="F32")
    s.add_argument("--doc-start", type=int, default=-1, help="the token that opens a document (-1: none)")
    s = model_cmd("eval", cmd_eval)
    s.add_argument("--data", required=True); s.add_argument("--seq-len", type=int, required=True)
    s.add_argument("--batches", type=int, required=True)
    s.add_argument("--format", choices=["text", "shard"], default="text")
    s = model_cmd("train", cmd_train)
    s.add_argument("--tokens", required=True); s.add_argument("--batch", type=int, default=1)
    s.add_argument("--steps", type=int, required=True); s.add_argument("--lr", type=float, required=True)
    for opt, dflt in (("--weight-decay", 0.1), ("--beta1", 0.9), ("--beta2", 0.95), ("--eps", 1e-8), ("--clip", 1.0)):
        s.add_argument(opt, type=float, default=dflt)
    s.add_argument("--decay-filter", choices=["all", "matrices"], default="all")
    s.add_argument("--out", help="folder to save the trained checkpoint (fp32)")
    s = sub.add_parser("init"); s.set_defaults(fn=cmd_init)
    s.add_argument("--config", required=True); s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, required=True); s.add_argument("--std", type=float, default=0.02)
    s = sub.add_parser("time-step"); s.set_defaults(fn=cmd_time_step)
    s.add_argument("--config", required=True); s.add_argument("--seq-len", type=int, required=True)
    s.add_argument("--batch", type=int, default=1); s.add_argument("--repeats", type=int, default=5)
    s.add_argument("--threads", type=int, default=0)
    s.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    s.add_argument("--block", type=int, default=0,
                   help="tokens per block of the chunked linear attention (0: by N, 64..256)")
    s.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="also time the step through torch.compile (auto: where torch has it; on: fail if it fails)")
    s.add_argument("--profile", type=int, default=0,
                   help="also profile one step of the faster form: its N operators of most self CPU time")
    s = sub.add_parser("blas"); s.set_defaults(fn=cmd_blas)
    s = sub.add_parser("selftest"); s.set_defaults(fn=cmd_selftest)
    s = sub.add_parser("peer-selftest"); s.set_defaults(fn=cmd_peer_selftest)
    return ap.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    try:
        return a.fn(a) or 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
