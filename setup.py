"""The optional C accelerator of the row masking (hoopy/postgres/_rowmask.c): built when a
compiler and the Python headers are there, skipped otherwise (``optional=True``: the install
goes on and hoopy uses the Python code, hoopy/postgres/rowbatch.py). Everything else is in
setup.cfg."""
import hashlib
from pathlib import Path

from setuptools import Extension, setup

SOURCE = "hoopy/postgres/_rowmask.c"
# The source's hash compiled in: a test fails on a module built from another version of the file.
digest = hashlib.sha256((Path(__file__).parent / SOURCE).read_bytes()).hexdigest()

setup(ext_modules=[Extension("hoopy.postgres._rowmask", [SOURCE], optional=True,
                             define_macros=[("ROWMASK_SOURCE", f'"{digest}"')])])
