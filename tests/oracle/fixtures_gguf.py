"""GGUF reader and dequantisation cases from the `gguf` package (llama.cpp's own Python writer and
quantisers), for tests/gguf_test.cpp.

Writes out/:
  every_type.gguf   written by gguf.GGUFWriter: one metadata key of every value type (arrays of
                    scalars, of strings and of arrays included), general.alignment 64, and one tensor
                    per type F32, F16, BF16, Q8_0, Q4_0, Q4_1 with random data quantised by gguf.quants
  every_type.json   what the writer was given: the metadata, and per tensor its ne, type name and the
                    values gguf.quants.dequantize returns for its stored blocks (the oracle)
"""
import json
import pathlib

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter
from gguf.quants import dequantize, quantize

TENSOR_TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"]


def make(out: pathlib.Path) -> None:
    rng = np.random.default_rng(20250207)
    path = out / "every_type.gguf"
    writer = GGUFWriter(path, arch="test")
    metadata = {
        "test.u8": (GGUFValueType.UINT8, 200), "test.i8": (GGUFValueType.INT8, -100),
        "test.u16": (GGUFValueType.UINT16, 60000), "test.i16": (GGUFValueType.INT16, -30000),
        "test.u32": (GGUFValueType.UINT32, 4000000000), "test.i32": (GGUFValueType.INT32, -2000000000),
        "test.u64": (GGUFValueType.UINT64, 18000000000000000000), "test.i64": (GGUFValueType.INT64, -9000000000000000000),
        "test.f32": (GGUFValueType.FLOAT32, 0.15625), "test.f64": (GGUFValueType.FLOAT64, -2.718281828459045),
        "test.bool": (GGUFValueType.BOOL, True), "test.string": (GGUFValueType.STRING, "héllo, wörld ✓"),
    }
    for key, (value_type, value) in metadata.items():
        writer.add_key_value(key, value, value_type)
    writer.add_array("test.i32_array", [3, -1, 4, -1, 5])
    writer.add_array("test.string_array", ["a", "", "ünïcode"])
    writer.add_array("test.nested_array", [[1, 2], [3]])
    writer.add_custom_alignment(64)  # general.alignment, and the writer pads tensor data to it

    tensors = {}
    for index, type_name in enumerate(TENSOR_TYPES):
        qtype = GGMLQuantizationType[type_name]
        rows, cols = 3 + index, 64  # cols: two 32-element blocks per row
        values = (rng.standard_normal((rows, cols)) * rng.uniform(0.1, 4.0)).astype(np.float32)
        if type_name == "F32":
            stored = values
        elif type_name == "F16":
            stored = values.astype(np.float16)
        else:
            stored = quantize(values, qtype)
        writer.add_tensor(f"t.{type_name.lower()}", stored, raw_shape=(rows, cols) if type_name in ("F32", "F16") else None,
                          raw_dtype=qtype)
        expected = dequantize(stored.reshape(-1).view(np.uint8) if type_name not in ("F32", "F16") else stored, qtype)
        tensors[f"t.{type_name.lower()}"] = {"ne": [cols, rows], "type": type_name,
                                             "values": np.asarray(expected, dtype=np.float32).reshape(-1).tolist()}
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    recorded = {key: value for key, (_, value) in metadata.items()}
    recorded.update({"test.i32_array": [3, -1, 4, -1, 5], "test.string_array": ["a", "", "ünïcode"],
                     "test.nested_array": [[1, 2], [3]]})
    (out / "every_type.json").write_text(json.dumps({"metadata": recorded, "tensors": tensors}, ensure_ascii=False))
