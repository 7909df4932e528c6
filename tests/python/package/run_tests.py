"""ctest's entry to the Python package's pytest suite: exits 77 (skipped) when the extension
was not built (no nanobind, or a sanitizer build), else runs pytest on this folder."""

import os
import sys

try:
    import crosscoder._core  # noqa: F401
except ImportError as error:
    print(f"skipped: the crosscoder Python package is not importable ({error}); it is built when "
          "scripts/setup_python.sh has installed nanobind (./dev.sh test does)")
    sys.exit(77)

import pytest

sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", os.path.dirname(os.path.abspath(__file__))]
                     + sys.argv[1:]))
