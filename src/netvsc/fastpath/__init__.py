"""numba kernels of the fast path (layer 3): numpy arrays in, numpy arrays out, no Python objects."""
