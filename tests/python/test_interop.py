"""Interop between crosscoder's C++ file I/O and NumPy / the `safetensors` package.

Both directions, through the C++ tool tests/tools/io_roundtrip.cpp (its path in the environment
variable CROSSCODER_IO_ROUNDTRIP, as ctest sets it):
  - .npy files written by NumPy (dtypes f32, f16, bf16 bits as '<u2', integers; format versions
    1.0, 2.0 and 3.0; 0-d to 3-d and empty shapes) read in C++ with identical values, and a
    Fortran-order array refused with a message that says so;
  - .npy and .safetensors files written in C++ load in NumPy and `safetensors` identically,
    metadata included;
  - .safetensors files written by `safetensors` (F32, F16, BF16 raw bits, I64, metadata) read in
    C++ identically.

Run: CROSSCODER_IO_ROUNDTRIP=build/tests/io_roundtrip .venv/bin/python tests/python/test_interop.py
Exits 77 (ctest: skipped) when numpy or safetensors is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path
from typing import Any

try:
    import numpy as np
    import safetensors
    import safetensors.numpy
except ImportError as error:  # pragma: no cover - depends on the environment
    np = None
    MISSING = f"{error.name} is not installed: run scripts/setup_python.sh"
else:
    MISSING = ""

TOOL = os.environ.get("CROSSCODER_IO_ROUNDTRIP", "")


def lcg(seed: int, n: int) -> list[int]:
    """The 32-bit linear congruential generator of io_roundtrip.cpp."""
    out = []
    x = seed
    for _ in range(n):
        x = (1664525 * x + 1013904223) % 2**32
        out.append(x)
    return out


def float_values(seed: int, n: int) -> np.ndarray:
    """io_roundtrip.cpp's float_values: exact float32 values in [-1, 1)."""
    return np.array([(x >> 8) * 2.0**-23 - 1.0 for x in lcg(seed, n)], dtype=np.float32)


def int_values(seed: int, n: int) -> np.ndarray:
    """io_roundtrip.cpp's int_values."""
    return np.array([(x >> 16) - 32768 for x in lcg(seed, n)], dtype=np.int64)


def to_bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 bit patterns, rounding to nearest even (finite values only)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def from_bfloat16_bits(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns → float32 (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def random_floats(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """float32 values with a wide range of magnitudes and signs."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 4, shape)).astype(np.float32)


@unittest.skipIf(MISSING, MISSING)
class InteropTest(unittest.TestCase):
    def setUp(self) -> None:
        if not TOOL or not Path(TOOL).is_file():
            self.fail(
                f"CROSSCODER_IO_ROUNDTRIP must name the built io_roundtrip tool, not '{TOOL}'"
            )
        self._tmp = tempfile.TemporaryDirectory(prefix="crosscoder-interop-")
        self.dir = Path(self._tmp.name)

    def tearDown(self) -> None:
        self._tmp.cleanup()

    def run_tool(self, *args: str, expect_ok: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([TOOL, *args], capture_output=True, text=True, check=False)
        if expect_ok and result.returncode != 0:
            self.fail(
                f"io_roundtrip {' '.join(args)} failed ({result.returncode}): {result.stderr}"
            )
        return result

    def read_npy_in_cpp(self, path: Path, bf16: bool = False) -> tuple[dict[str, Any], np.ndarray]:
        """What the C++ NpyFile reads from `path`: its header report and values."""
        out = path.with_suffix(".cpp.npy")
        result = self.run_tool("read-npy", str(path), str(out), *(["--bf16"] if bf16 else []))
        return json.loads(result.stdout), np.load(out)

    # --- NumPy → C++ ------------------------------------------------------------------------

    def test_float_npy_of_every_rank_reads_identically(self) -> None:
        for shape in [(), (7,), (5, 3), (2, 3, 4), (0,), (0, 4), (3, 0), (1, 1, 1)]:
            for dtype in [np.float32, np.float16, np.float64]:
                with self.subTest(shape=shape, dtype=dtype.__name__):
                    array = random_floats(shape, seed=len(shape)).astype(dtype)
                    path = self.dir / f"a-{len(shape)}-{np.dtype(dtype).str[1:]}.npy"
                    np.save(path, array)
                    report, values = self.read_npy_in_cpp(path)
                    self.assertEqual(report["descr"], np.dtype(dtype).str)
                    self.assertEqual(tuple(report["shape"]), shape)
                    self.assertEqual(values.dtype, np.float32)
                    self.assertEqual(values.shape, shape)
                    np.testing.assert_array_equal(values, array.astype(np.float32))

    def test_float16_special_values(self) -> None:
        bits = np.array(
            [0x0000, 0x8000, 0x0001, 0x03FF, 0x0400, 0x3C00, 0x7BFF, 0xFBFF, 0x7C00, 0xFC00],
            dtype=np.uint16,
        )
        array = bits.view(np.float16)
        path = self.dir / "special.npy"
        np.save(path, array)
        _, values = self.read_npy_in_cpp(path)
        np.testing.assert_array_equal(values, array.astype(np.float32))
        self.assertTrue(np.signbit(values[1]))
        nan = np.array([0x7E00], dtype=np.uint16).view(np.float16)
        np.save(path, nan)
        _, values = self.read_npy_in_cpp(path)
        self.assertTrue(np.isnan(values[0]))

    def test_bfloat16_bits_as_u2(self) -> None:
        array = random_floats((6, 5), seed=3)
        bits = to_bfloat16_bits(array)
        path = self.dir / "bf16.npy"
        np.save(path, bits)
        report, values = self.read_npy_in_cpp(path, bf16=True)
        self.assertEqual(report["descr"], "<u2")
        np.testing.assert_array_equal(values, from_bfloat16_bits(bits))
        # Rounding to bfloat16 keeps 8 significant bits.
        np.testing.assert_allclose(values, array, rtol=2.0**-8)
        # Without the bfloat16 option the same file reads as integers.
        _, integers = self.read_npy_in_cpp(path)
        np.testing.assert_array_equal(integers, bits.astype(np.int32))

    def test_integer_npy(self) -> None:
        for dtype in [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.int64, np.bool_]:
            with self.subTest(dtype=np.dtype(dtype).str):
                info = np.iinfo(dtype) if dtype is not np.bool_ else None
                if info is None:
                    array = np.array([True, False, True])
                else:
                    low, high = max(info.min, -(2**31)), min(info.max, 2**31 - 1)
                    array = np.array([low, -1 if low < 0 else 0, 0, 1, high], dtype=dtype)
                path = self.dir / "ints.npy"
                np.save(path, array)
                report, values = self.read_npy_in_cpp(path)
                self.assertEqual(report["descr"], np.dtype(dtype).str)
                np.testing.assert_array_equal(values, array.astype(np.int32))

    def test_format_versions(self) -> None:
        array = random_floats((4, 6), seed=5)
        for version in [(1, 0), (2, 0), (3, 0)]:
            with self.subTest(version=version):
                path = self.dir / f"v{version[0]}.npy"
                with open(path, "wb") as f:
                    np.lib.format.write_array(f, array, version=version)
                self.assertEqual(path.read_bytes()[6], version[0])
                _, values = self.read_npy_in_cpp(path)
                np.testing.assert_array_equal(values, array)

    def test_fortran_order_is_refused(self) -> None:
        array = np.asfortranarray(random_floats((3, 4), seed=6))
        path = self.dir / "fortran.npy"
        np.save(path, array)
        result = self.run_tool("read-npy", str(path), str(self.dir / "out.npy"), expect_ok=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("Fortran", result.stderr)
        self.assertIn(str(path), result.stderr)

    def test_big_endian_is_refused(self) -> None:
        path = self.dir / "big.npy"
        np.save(path, np.arange(4, dtype=">f4"))
        result = self.run_tool("read-npy", str(path), str(self.dir / "out.npy"), expect_ok=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn(str(path), result.stderr)

    # --- C++ → NumPy and safetensors ------------------------------------------------------------

    def test_cpp_written_files_load_in_python(self) -> None:
        self.run_tool("write", str(self.dir))

        f32 = np.load(self.dir / "f32.npy")
        self.assertEqual(f32.dtype, np.dtype("<f4"))
        np.testing.assert_array_equal(f32, float_values(1, 35).reshape(5, 7))
        f32_3d = np.load(self.dir / "f32_3d.npy")
        np.testing.assert_array_equal(f32_3d, float_values(2, 24).reshape(2, 3, 4))
        i32 = np.load(self.dir / "i32.npy")
        self.assertEqual(i32.dtype, np.dtype("<i4"))
        np.testing.assert_array_equal(i32, int_values(3, 11))
        f16 = np.load(self.dir / "f16.npy")
        self.assertEqual(f16.dtype, np.dtype("<f2"))
        # float16 rounding agrees bit for bit with NumPy's (nearest even).
        np.testing.assert_array_equal(
            f16.view(np.uint16), float_values(6, 10).astype(np.float16).view(np.uint16).reshape(2, 5)
        )
        bf16_u2 = np.load(self.dir / "bf16_u2.npy")
        self.assertEqual(bf16_u2.dtype, np.dtype("<u2"))
        np.testing.assert_array_equal(bf16_u2, to_bfloat16_bits(float_values(7, 6).reshape(3, 2)))
        for name in ["f32.npy", "f32_3d.npy", "i32.npy", "f16.npy", "bf16_u2.npy"]:
            data = (self.dir / name).read_bytes()
            self.assertEqual(data[6:8], b"\x01\x00", f"{name}: not format version 1.0")
            header_length = int.from_bytes(data[8:10], "little")
            self.assertEqual((10 + header_length) % 64, 0, f"{name}: data not 64-byte aligned")

        numeric_path = self.dir / "numeric.safetensors"
        numeric = safetensors.numpy.load_file(numeric_path)
        self.assertEqual(sorted(numeric), ["counts", "halves", "weights"])
        np.testing.assert_array_equal(numeric["weights"], float_values(4, 12).reshape(4, 3))
        self.assertEqual(numeric["weights"].dtype, np.float32)
        np.testing.assert_array_equal(numeric["counts"], int_values(5, 6))
        self.assertEqual(numeric["counts"].dtype, np.int64)
        self.assertEqual(numeric["halves"].dtype, np.float16)
        # float16 rounding agrees bit for bit with NumPy's (nearest even).
        np.testing.assert_array_equal(
            numeric["halves"].view(np.uint16),
            float_values(6, 10).astype(np.float16).view(np.uint16).reshape(2, 5),
        )
        with safetensors.safe_open(numeric_path, framework="numpy") as f:
            self.assertEqual(
                f.metadata(), {"format": "io-roundtrip-1", "note": 'café {"json": [1, 2]}'}
            )

        raw = safetensors.deserialize((self.dir / "bf16.safetensors").read_bytes())
        tensors = {name: info for name, info in raw}
        # deserialize spells dtypes as the format does ("BF16"); some versions use NumPy-like names.
        self.assertIn(tensors["bf16"]["dtype"], ("BF16", "bfloat16"))
        self.assertEqual(list(tensors["bf16"]["shape"]), [3, 2])
        bits = np.frombuffer(bytes(tensors["bf16"]["data"]), dtype="<u2").reshape(3, 2)
        reference = float_values(7, 6).reshape(3, 2)
        np.testing.assert_array_equal(bits, to_bfloat16_bits(reference))
        self.assertIn(tensors["reference"]["dtype"], ("F32", "float32"))
        np.testing.assert_array_equal(
            np.frombuffer(bytes(tensors["reference"]["data"]), dtype="<f4").reshape(3, 2), reference
        )

    def test_cpp_written_files_read_back_in_cpp(self) -> None:
        self.run_tool("write", str(self.dir))
        _, values = self.read_npy_in_cpp(self.dir / "f32.npy")
        np.testing.assert_array_equal(values, float_values(1, 35).reshape(5, 7))
        report = self.read_safetensors_in_cpp(self.dir / "bf16.safetensors")
        self.assertEqual(report["metadata"], {"sources": '["bf16"]'})
        reference = float_values(7, 6).reshape(3, 2)
        np.testing.assert_array_equal(
            report["values"]["bf16"], from_bfloat16_bits(to_bfloat16_bits(reference))
        )
        np.testing.assert_array_equal(report["values"]["reference"], reference)

    # --- safetensors → C++ ------------------------------------------------------------------

    def read_safetensors_in_cpp(self, path: Path) -> dict[str, Any]:
        """The C++ SafetensorsFile's view of `path`: metadata, tensor infos and values."""
        out = self.dir / f"{path.stem}-cpp"
        report = json.loads(self.run_tool("read-safetensors", str(path), str(out)).stdout)
        report["values"] = {t["name"]: np.load(out / t["file"]) for t in report["tensors"]}
        report["dtypes"] = {t["name"]: t["dtype"] for t in report["tensors"]}
        report["shapes"] = {t["name"]: tuple(t["shape"]) for t in report["tensors"]}
        return report

    def test_safetensors_package_files_read_identically(self) -> None:
        weights = random_floats((4, 3), seed=8)
        halves = random_floats((2, 2, 3), seed=9).astype(np.float16)
        counts = np.array([-(2**31), -1, 0, 7, 2**31 - 1], dtype=np.int64)
        scalar = np.array(2.5, dtype=np.float32)
        empty = np.zeros((0, 5), dtype=np.float32)
        metadata = {"format": "crosscoder-checkpoint-1", "config": '{"width": 3}', "empty": ""}
        path = self.dir / "package.safetensors"
        safetensors.numpy.save_file(
            {
                "weights": weights,
                "halves": halves,
                "counts": counts,
                "scalar": scalar,
                "empty": empty,
            },
            path,
            metadata=metadata,
        )
        report = self.read_safetensors_in_cpp(path)
        self.assertEqual(report["metadata"], metadata)
        self.assertEqual(
            report["dtypes"],
            {"weights": "F32", "halves": "F16", "counts": "I64", "scalar": "F32", "empty": "F32"},
        )
        self.assertEqual(
            report["shapes"],
            {"weights": (4, 3), "halves": (2, 2, 3), "counts": (5,), "scalar": (), "empty": (0, 5)},
        )
        np.testing.assert_array_equal(report["values"]["weights"], weights)
        np.testing.assert_array_equal(report["values"]["halves"], halves.astype(np.float32))
        np.testing.assert_array_equal(report["values"]["counts"], counts.astype(np.int32))
        np.testing.assert_array_equal(report["values"]["scalar"], scalar)
        self.assertEqual(report["values"]["empty"].shape, (0, 5))

    def test_safetensors_bfloat16_raw_bits(self) -> None:
        array = random_floats((5, 4), seed=10)
        bits = to_bfloat16_bits(array)
        tensors = {
            "layer6.base": {"dtype": "bfloat16", "shape": [5, 4], "data": bits.tobytes()},
            "layer6.tuned": {"dtype": "float32", "shape": [5, 4], "data": array.tobytes()},
            "labels": {
                "dtype": "int8",
                "shape": [5],
                "data": np.array([0, 1, 1, 0, -1], dtype=np.int8).tobytes(),
            },
        }
        path = self.dir / "bf16.safetensors"
        safetensors.serialize_file(
            tensors, str(path), metadata={"sources": '["layer6.base", "layer6.tuned"]'}
        )
        report = self.read_safetensors_in_cpp(path)
        self.assertEqual(
            report["dtypes"], {"layer6.base": "BF16", "layer6.tuned": "F32", "labels": "I8"}
        )
        self.assertEqual(report["metadata"], {"sources": '["layer6.base", "layer6.tuned"]'})
        np.testing.assert_array_equal(report["values"]["layer6.base"], from_bfloat16_bits(bits))
        np.testing.assert_array_equal(report["values"]["layer6.tuned"], array)
        np.testing.assert_array_equal(report["values"]["labels"], [0, 1, 1, 0, -1])


if __name__ == "__main__":
    if MISSING:
        print(f"skipped: {MISSING}")
        sys.exit(77)
    unittest.main(verbosity=2)
