"""calmcap: video captioning and text-video retrieval with class-anchor-aligned generative modeling (CALM).

Importing the package is cheap and has no side effects; torch, open_clip and transformers are
imported by the modules that use them.
"""

__version__ = "0.1.0"
