"""NVFP4 oracle fixtures from the external packages: NVIDIA ModelOpt and compressed-tensors (llm-compressor's).

out/tensors/CASE.safetensors, for random and adversarial fp32 tensors [R, C]:
  input              F32 [R, C]
  modelopt_packed    U8  [R, C/2]   NVFP4QTensor.quantize (absent for the all-zero case: ModelOpt's
  modelopt_scales    U8  [R, C/16]  global scale is 0 there and its block scales NaN)
  modelopt_global    F32 [1]        weight_scale_2, the multiplier
  modelopt_dequant   F32 [R, C]     NVFP4QTensor.dequantize in fp32
  ct_packed          U8  [R, C/2]   NVFP4PackedCompressor.compress after llm-compressor's scale recipe
  ct_scales          U8  [R, C/16]
  ct_global          F32 [1]        weight_global_scale, the divisor
  ct_dequant         F32 [R, C]     compressed-tensors' dequantize in fp32
  ct_decompressed    BF16 [R, C]    NVFP4PackedCompressor.decompress (its bf16 output)
out/models/NAME/: a tiny Qwen3.5 hybrid (dims multiples of 16) quantised by the packages, every linear layer
but lm_head, plus reference.safetensors computed by transformers in float64 on the weights the package
dequantises (the layout of fixtures_models.py):
  modelopt       ModelOpt layout, hf_quant_config.json, input_scale present
  ct             compressed-tensors nvfp4-pack-quantized (W4A4 scheme: input_global_scale present)
  ct_mixed       compressed-tensors, the GDN projections (linear_attn.*) left bf16
  bf16           the unquantised model (input to `uberlm quantize` in the C++ tests)
"""
import json
import math
import pathlib
import shutil
import warnings

import torch
from safetensors.torch import save_file
import transformers
from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

import fixtures_models as fm

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor
from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8
from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme, preset_name_to_scheme
from compressed_tensors.quantization.lifecycle.forward import dequantize
from compressed_tensors.quantization.utils.helpers import compute_dynamic_scales_and_zp, generate_gparam

BLOCK = 16


def modelopt_quantize(w: torch.Tensor) -> dict[str, torch.Tensor]:
    # w: [R, C] fp32 -> packed [R, C/2], e4m3 scales [R, C/16], weight_scale_2 scalar, fp32 dequant.
    qtensor, scales, scale_2 = NVFP4QTensor.quantize(w.clone(), BLOCK)
    dequant = qtensor.dequantize(dtype=torch.float32, scale=scales, double_scale=scale_2, block_sizes={-1: BLOCK})
    return {"packed": qtensor._quantized_data.contiguous(), "scales": scales.view(torch.uint8).contiguous(),
            "global": scale_2.float().reshape(1), "dequant": dequant.float().contiguous()}


def ct_scheme(preset: str) -> QuantizationScheme:
    return preset_name_to_scheme(preset, ["Linear"])


def ct_quantize(w: torch.Tensor, scheme: QuantizationScheme) -> dict[str, torch.Tensor]:
    # llm-compressor's weight recipe: the tensor's global scale (6 * 448 / amax), per-group scales from the
    # group min/max rounded to E4M3, then the compressor packs; decompress gives their bf16 weights.
    args = scheme.weights
    global_scale = generate_gparam(w.min(), w.max())
    scale, zero_point = compute_dynamic_scales_and_zp(w, args, module=None, global_scale=global_scale)
    compressed = NVFP4PackedCompressor.compress(
        {"weight": w.clone(), "weight_scale": scale, "weight_global_scale": global_scale,
         "weight_zero_point": zero_point}, scheme)
    packed, scales = compressed["weight_packed"], compressed["weight_scale"]
    rows, half = packed.shape
    unpacked = unpack_fp4_from_uint8(packed, rows, half * 2, dtype=torch.float32)
    dequant = dequantize(x_q=unpacked, scale=scales.to(torch.float32), args=args,
                         global_scale=compressed["weight_global_scale"], dtype=torch.float32)
    decompressed = NVFP4PackedCompressor.decompress(dict(compressed), scheme)["weight"]
    return {"packed": packed.contiguous(), "scales": scales.view(torch.uint8).contiguous(),
            "global": compressed["weight_global_scale"].float().reshape(1), "dequant": dequant.contiguous(),
            "decompressed": decompressed.to(torch.bfloat16).contiguous()}


def adversarial_cases(gen: torch.Generator) -> dict[str, torch.Tensor]:
    def uniform(*shape):
        return torch.rand(*shape, generator=gen) * 2 - 1

    cases = {
        "gaussian": torch.randn(37, 272, generator=gen) * 0.02,
        "bf16_weights": (torch.randn(24, 128, generator=gen) * 0.05).to(torch.bfloat16).float(),
        "zeros": torch.zeros(4, 64),
        "tiny": uniform(3, 64) * 1e-30,
        "huge": uniform(3, 64) * 1e30,
        "near_float_max": uniform(2, 32) * 3e38,
    }
    # Block magnitudes from 2^-40 (the scale clamps to E4M3's smallest, 2^-9) to 2^30 (sets the global scale):
    # all-zero blocks, single spikes among zeros, random blocks.
    span = torch.zeros(4 * 24, BLOCK)
    for block in range(span.shape[0]):
        magnitude = 2.0 ** (block % 71 - 40)
        kind = block % 6
        if kind == 1:
            span[block, 5] = magnitude
        elif kind != 0:
            span[block] = uniform(BLOCK) * magnitude
    cases["e4m3_span"] = span.reshape(4, 24 * BLOCK)
    # Exact ties of the E2M1 grid: with amax = 2688 * 2^-10 the global scale is 2^-10 exactly, and a block
    # whose amax is 6 * 2^-8 gets scale 4 and multiplier 2^-8, so midpoint * 2^-8 lands on a tie.
    midpoints = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0])
    ties = uniform(2, 4 * BLOCK) * 0.001
    ties[0, 0] = 2688 * 2.0 ** -10
    ties[1, :BLOCK] = torch.cat([midpoints, -midpoints]) * 2.0 ** -8
    ties[1, BLOCK:2 * BLOCK] = torch.cat([midpoints * 1.0000001, -midpoints * 0.9999999]) * 2.0 ** -8
    cases["ties"] = ties
    # Negative values that round to zero (code 8 in both packages), -0.0 (code 0) and one large element.
    signs = uniform(3, 2 * BLOCK) * 1e-4
    signs[0, 0] = 1.0
    signs[1, ::3] = -0.0
    signs[2, :8] = -1e-9
    cases["signed_zeros"] = signs
    return cases


def make_tensor_cases(out: pathlib.Path) -> None:
    folder = out / "tensors"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    scheme = ct_scheme("NVFP4A16")
    for name, w in adversarial_cases(torch.Generator().manual_seed(4)).items():
        w = w.float().contiguous()
        tensors = {"input": w}
        if float(w.abs().max()) > 0:
            tensors.update({f"modelopt_{k}": v for k, v in modelopt_quantize(w).items()})
        tensors.update({f"ct_{k}": v for k, v in ct_quantize(w, scheme).items()})
        for key in ("modelopt_dequant", "ct_dequant"):
            if key in tensors and not torch.isfinite(tensors[key]).all():
                raise RuntimeError(f"fixtures_nvfp4: {key} of case {name} is not finite")
        save_file(tensors, str(folder / f"{name}.safetensors"))
    print(f"  nvfp4: {len(list(folder.iterdir()))} tensor cases")


def hybrid_config() -> Qwen3_5TextConfig:
    # fixtures_models' hybrid with every in_features a multiple of the NVFP4 block (16).
    config = fm.hybrid_config()
    config.hidden_size = 64
    config.intermediate_size = 96
    config.num_attention_heads = 2
    config.head_dim = 32
    config.linear_key_head_dim = 16
    config.linear_value_head_dim = 16
    config.rope_parameters = {**config.rope_parameters, "mrope_section": [2, 1, 1]}  # rotary dim 32 * 0.25 = 8
    return config


def is_quantised(name: str, keep_gdn: bool) -> bool:
    if not name.endswith(".weight") or name == "lm_head.weight" or "embed_tokens" in name:
        return False
    if "norm" in name or "conv1d" in name:
        return False
    return not (keep_gdn and ".linear_attn." in name)


def write_quantised_model(out: pathlib.Path, name: str, bf16: pathlib.Path, model: torch.nn.Module, layout: str,
                          keep_gdn: bool, prompt_ids: torch.Tensor) -> None:
    folder = out / name
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(bf16, folder)
    state = {n: t.to(torch.bfloat16).contiguous() for n, t in model.state_dict().items()}
    dequantised = {n: t.float() for n, t in state.items()}
    scheme = ct_scheme("NVFP4" if not keep_gdn else "NVFP4A16")
    saved, ignored = {}, []
    for tensor_name, tensor in state.items():
        if tensor.dim() != 2 or not is_quantised(tensor_name, keep_gdn):
            saved[tensor_name] = tensor
            if tensor.dim() == 2:
                ignored.append(tensor_name.removesuffix(".weight"))
            continue
        module = tensor_name.removesuffix(".weight")
        if layout == "modelopt":
            q = modelopt_quantize(tensor.float())
            saved[f"{module}.weight"] = q["packed"]
            saved[f"{module}.weight_scale"] = q["scales"].view(torch.float8_e4m3fn)
            saved[f"{module}.weight_scale_2"] = q["global"].reshape(())
            saved[f"{module}.input_scale"] = torch.tensor(0.05)
        else:
            q = ct_quantize(tensor.float(), scheme)
            saved[f"{module}.weight_packed"] = q["packed"]
            saved[f"{module}.weight_scale"] = q["scales"].view(torch.float8_e4m3fn)
            saved[f"{module}.weight_global_scale"] = q["global"]
            if not keep_gdn:
                saved[f"{module}.input_global_scale"] = torch.tensor([2688.0 / 8.0])
        dequantised[tensor_name] = q["dequant"]
    (folder / "model.safetensors").unlink()
    save_file(saved, str(folder / "model.safetensors"), metadata={"format": "pt"})

    config = json.loads((folder / "config.json").read_text())
    if layout == "modelopt":
        quant = {"quant_algo": "NVFP4", "kv_cache_quant_algo": None, "group_size": BLOCK, "exclude_modules": ignored}
        (folder / "hf_quant_config.json").write_text(json.dumps(
            {"producer": {"name": "modelopt", "version": "0.47.0"}, "quantization": quant}, indent=2) + "\n")
        config["quantization_config"] = {"quant_method": "modelopt", **quant}
    else:
        quant = QuantizationConfig(config_groups={"group_0": scheme}, format="nvfp4-pack-quantized",
                                   quantization_status="compressed", ignore=ignored)
        config["quantization_config"] = quant.model_dump(mode="json")
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    # transformers (in float64: fixtures_models.greedy_reference) on the package's dequantised weights.
    model.load_state_dict(dequantised)
    ref = fm.greedy_reference(model, prompt_ids)
    fm.check_reference(name, ref)
    save_file(ref, str(folder / "reference.safetensors"))
    fm.write_generation_config(folder, model.config.vocab_size, ref["decode_ids"])


def make_models(out: pathlib.Path) -> None:
    models = out / "models"
    models.mkdir(parents=True, exist_ok=True)
    config = hybrid_config()
    bf16 = fm.make_flat_model(models, "bf16", Qwen3_5ForCausalLM, config, True, seed=41)
    prompt_ids = torch.randint(0, config.vocab_size, (fm.PROMPT_LEN,), generator=torch.Generator().manual_seed(42))
    for name, layout, keep_gdn in (("modelopt", "modelopt", False), ("ct", "ct", False), ("ct_mixed", "ct", True)):
        model = Qwen3_5ForCausalLM.from_pretrained(bf16, dtype=torch.float32, attn_implementation="eager").eval()
        write_quantised_model(models, name, bf16, model, layout, keep_gdn, prompt_ids)


def make(out: pathlib.Path) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    make_tensor_cases(out)
    make_models(out)
