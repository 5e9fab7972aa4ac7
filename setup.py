"""The optional C accelerators: the row masking (hoopy/postgres/_rowmask.c) and the JSON body
masking's scanner (hoopy/http/_jsonmask.c) and the audit events' encodings (hoopy/audit/_canon.c,
linked with OpenSSL's libcrypto for SHA-256): built when a compiler and the Python headers are
there, skipped otherwise (``optional=True``: the install goes on and hoopy uses the Python code,
hoopy/postgres/rowbatch.py, hoopy/http/masker.py, hoopy/policy/masking.py, hoopy/audit/chain.py). Everything else is
in setup.cfg."""
import hashlib
from pathlib import Path

from setuptools import Extension, setup

SOURCE = "hoopy/postgres/_rowmask.c"
JSON_SOURCE = "hoopy/http/_jsonmask.c"
CANON_SOURCE = "hoopy/audit/_canon.c"


def digest(source: str) -> str:
    """The source's hash, compiled in: a test fails on a module built from another version of the file."""
    return hashlib.sha256((Path(__file__).parent / source).read_bytes()).hexdigest()


setup(ext_modules=[Extension("hoopy.postgres._rowmask", [SOURCE], optional=True,
                             define_macros=[("ROWMASK_SOURCE", f'"{digest(SOURCE)}"')]),
                   Extension("hoopy.http._jsonmask", [JSON_SOURCE], optional=True,
                             define_macros=[("JSONMASK_SOURCE", f'"{digest(JSON_SOURCE)}"')]),
                   Extension("hoopy.audit._canon", [CANON_SOURCE], optional=True, libraries=["crypto"],
                             define_macros=[("CANON_SOURCE", f'"{digest(CANON_SOURCE)}"')])])
