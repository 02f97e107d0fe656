"""transformers' own model code run in float64: the oracle's references are exact to far below any
tolerance a test states, so a test measures our engine's error alone, not the sum of ours and torch's.

Why: torch's fp32 CPU matmul picks its kernel (and so its summation order) by CPU and version. On the
ill-conditioned positions of the wide-draw hybrids that order alone moves fp32 logits by up to 7.5e-5
of the largest logit, so an fp32 reference drifts with the machine and the torch release (issue 12:
ct_mixed, 1.25e-4 on one CI machine). transformers' Qwen3.5 code casts to float32 inside (the Gated
DeltaNet core, the norms, RoPE, the attention softmax), so model.double() alone is not float64: the mode
below turns every float32 request of that code (casts, dtype= arguments, Tensor.float) into float64."""
import torch
from torch.overrides import TorchFunctionMode


class Float64Everywhere(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.float:
            func = torch.Tensor.double
        args = tuple(torch.float64 if a is torch.float32 else a for a in args)
        kwargs = {k: (torch.float64 if v is torch.float32 else v) for k, v in (kwargs or {}).items()}
        return func(*args, **kwargs)


def in_float64(model: torch.nn.Module) -> torch.nn.Module:
    """The model's parameters and buffers converted to float64 in place (bf16 and NVFP4 values are exact there)."""
    return model.double()
