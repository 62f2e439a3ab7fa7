"""Image inputs: what ``X`` may be and how it becomes batches.

``inputs``: the adapters (arrays, paths, bytes, PIL images, pandas and
Dask collections) and their identities; ``decode``: reading and decoding
one image (reduced decoding, pixel limits); ``folders``: image folders
and list files.
"""
