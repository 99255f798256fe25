"""Shared fixtures. Tests never touch the Hugging Face Hub and run on a 2-core CPU in minutes.

Without CUDA, Triton kernels run under the interpreter (TRITON_INTERPRET=1 must be set before triton
compiles anything, hence here); with CUDA the same tests run the compiled kernels, and tests marked `gpu` run
too.
"""

import os

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RUVON_FLASH_AUTOTUNE", "0")  # a few tiles, not the full autotuning sweep
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def gpt2_sdpa():
    from ruvoninference.attention import load_model_with_attention

    return load_model_with_attention("gpt2-random", "sdpa", device="cpu")


@pytest.fixture(scope="session")
def smollm2_sdpa():
    from ruvoninference.attention import load_model_with_attention

    return load_model_with_attention("smollm2-135m", "sdpa", device="cpu")
