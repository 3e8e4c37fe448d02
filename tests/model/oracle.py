"""Pure-torch reference of onebyte-rng-v1 and of replay: the oracle the kernels are checked against.

Written independently of model/rng.py and the kernels: torch int64 arithmetic wraps modulo
2**64 like uint64, and a logical right shift is an arithmetic shift with the sign-extended
high bits masked off. Slow and simple on purpose; one update at a time, on the int64 state.
"""

import torch


M64 = (1 << 64) - 1


def s64(u: int) -> int:
    """uint64 value -> the int64 with the same bits (torch has no general uint64 arithmetic)."""
    u &= M64
    return u - (1 << 64) if u >= 1 << 63 else u


GAMMA = s64(0x9E3779B97F4A7C15)
MIX1 = s64(0xBF58476D1CE4E5B9)
MIX2 = s64(0x94D049BB133111EB)
NOISE_DOMAIN = int.from_bytes(b"ob-noise", "little")


def lsr(z: torch.Tensor, k: int) -> torch.Tensor:
    return (z >> k) & ((1 << (64 - k)) - 1)


def mix64(z: torch.Tensor) -> torch.Tensor:
    z = (z ^ lsr(z, 30)) * MIX1
    z = (z ^ lsr(z, 27)) * MIX2
    return z ^ lsr(z, 31)


def words(seed: int, w: torch.Tensor) -> torch.Tensor:
    key = mix64(torch.tensor([s64(seed ^ NOISE_DOMAIN)], dtype=torch.int64))
    return mix64(key + w * GAMMA)


def signs(seed: int, idx: torch.Tensor) -> torch.Tensor:
    """Rademacher signs (int32, +-1) of the given int64 element indices."""
    h = words(seed, idx >> 6)
    bit = (h >> (idx & 63)) & 1  # bit (i & 63) survives an arithmetic shift unchanged
    return (1 - 2 * bit).to(torch.int32)


def replay(state: torch.Tensor, offsets, sizes, updates, mask=None) -> torch.Tensor:
    """Return state (int64 quanta) + sum over updates (seed, coef[T]) of coef[t] * z, one update at a
    time; mask (bool [N], optional): only those weights take noise."""
    out = state.clone()
    for seed, coef in updates:
        for t, (o, n) in enumerate(zip(offsets, sizes)):
            o, n = int(o), int(n)
            z = signs(seed, torch.arange(o, o + n, dtype=torch.int64)).to(torch.int64)
            if mask is not None:
                z = z * torch.as_tensor(mask[o:o + n], dtype=torch.int64)
            out[o:o + n] += int(coef[t]) * z
    return out


def lowrank_noise(seed: int, vseed: int, offset: int, m: int, n: int, r: int) -> torch.Tensor:
    """U V^T (int64 [m, n]) with U[i, k] = z(seed, offset + i r + k), V[j, k] = z(vseed, offset + j r + k)."""
    u = signs(seed, offset + torch.arange(m * r, dtype=torch.int64)).to(torch.int64).view(m, r)
    v = signs(vseed, offset + torch.arange(n * r, dtype=torch.int64)).to(torch.int64).view(n, r)
    return u @ v.T


def show(state: torch.Tensor, offsets, sizes, quantum) -> torch.Tensor:
    """The fp32 weights of a state: float32(k) * quantum (k converted through float64: exact below 2**53)."""
    out = torch.empty(state.shape, dtype=torch.float32)
    for o, n, q in zip(offsets, sizes, quantum):
        o, n = int(o), int(n)
        out[o:o + n] = state[o:o + n].to(torch.float64).to(torch.float32) * float(q)
    return out


# -- tiny models and a loss for the tests ------------------------------------------------------
def tiny_llama(seed: int = 0, tie: bool = True):
    """A 2-layer LlamaForCausalLM (~30k params), tied embeddings, random init from `seed`."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)  # model init only; never used for perturbations
    cfg = LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                      tie_word_embeddings=tie)
    return LlamaForCausalLM(cfg).eval()


def lm_batch(seed: int = 0, n: int = 4, length: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 61, (n, length), generator=g)


def lm_loss(model, batch) -> float:
    return model(input_ids=batch, labels=batch).loss.item()
