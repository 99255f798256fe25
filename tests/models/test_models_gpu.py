"""On CUDA: the forward pass captures into a CUDA graph and replays with the same logits as eager mode."""

import pytest
import torch
import torch.nn.functional as F

from ruvoninference.models import ModelConfig, from_transformers

pytestmark = pytest.mark.gpu
PROMPT = [5, 17, 200, 3, 99, 42, 7]
DECODE = [128, 64, 1, 250, 11]


class StaticCacheAttention:
    """One sequence in preallocated K/V (L, P, Hkv, D); `positions` (T,) say where the step's tokens go."""

    def __init__(self, config: ModelConfig, max_len: int, device: torch.device, dtype: torch.dtype):
        shape = (config.num_layers, max_len, config.num_kv_heads, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.key_positions = torch.arange(max_len, device=device)
        self.scale = config.attn_scale
        self.positions: torch.Tensor | None = None

    def __call__(self, layer, q, k, v):
        self.k[layer].index_copy_(0, self.positions, k)
        self.v[layer].index_copy_(0, self.positions, v)
        visible = self.key_positions[None, :] <= self.positions[:, None]  # (T, P): no shape depends on data
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1), self.k[layer].transpose(0, 1), self.v[layer].transpose(0, 1),
            attn_mask=visible, scale=self.scale, enable_gqa=True,
        )  # fmt: skip
        return out.transpose(0, 1)  # (T, Hq, D)


@torch.no_grad()
def test_decode_step_replays_as_a_cuda_graph(tiny_name, tiny_transformers):
    device = torch.device("cuda")
    hf = tiny_transformers(tiny_name).to(device)
    model = from_transformers(hf, device, torch.float32)
    eager, graphed = (StaticCacheAttention(model.config, 32, device, torch.float32) for _ in range(2))
    prompt = torch.tensor(PROMPT, device=device)
    for attention in (eager, graphed):
        attention.positions = torch.arange(len(PROMPT), device=device)
        model(prompt, attention.positions, attention)

    static_ids = torch.tensor([DECODE[0]], device=device)
    graphed.positions = torch.tensor([len(PROMPT)], device=device)

    def step():
        return model.compute_logits(model(static_ids, graphed.positions, graphed))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up writes the same K/V as the first replay will
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_logits = step()

    expected = hf(torch.tensor([PROMPT + DECODE], device=device)).logits[0, len(PROMPT) - 1 :]
    got_graph, got_eager = [], []
    for i, token in enumerate(DECODE):
        position = len(PROMPT) + i
        static_ids.fill_(token)
        graphed.positions.fill_(position)
        graph.replay()
        got_graph.append(static_logits.clone())
        eager.positions = torch.tensor([position], device=device)
        hidden = model(torch.tensor([token], device=device), eager.positions, eager)
        got_eager.append(model.compute_logits(hidden))
    torch.testing.assert_close(torch.cat(got_graph), torch.cat(got_eager), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat(got_graph), expected[1:], rtol=1e-4, atol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_matches_transformers(tiny_name, tiny_transformers, dtype):
    device = torch.device("cuda")
    hf = tiny_transformers(tiny_name).to(device=device, dtype=dtype)
    model = from_transformers(hf, device, dtype)
    attention = StaticCacheAttention(model.config, 32, device, dtype)
    attention.positions = torch.arange(len(PROMPT + DECODE), device=device)
    hidden = model(torch.tensor(PROMPT + DECODE, device=device), attention.positions, attention)
    ours = model.compute_logits(hidden)
    theirs = hf(torch.tensor([PROMPT + DECODE], device=device)).logits[0]
    scale = theirs.float().abs().max()
    assert (ours.float() - theirs.float()).abs().max() <= 0.02 * scale
