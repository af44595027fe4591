"""Build script. The pure-Python package always installs; the optional compiled extension (csrc/) is added by
its own issue and is skipped with PARATRITON_BUILD_EXT=0 or when no toolchain is present."""

from setuptools import setup

setup()
