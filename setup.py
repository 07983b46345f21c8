"""Only the native rule-counting kernel lives here; everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        # Loaded with ctypes by sal/rules/native.py. Optional: where no C compiler is found the
        # install goes on without it and count_rules runs its numpy engine.
        Extension(
            "sal.rules._kernel",
            sources=["sal/rules/_kernel.c"],
            extra_compile_args=["-O3", "-std=c99"],
            optional=True,
        )
    ]
)
