"""The version of calmcap: one module with nothing in it to import, so any module may record it."""

__version__ = "0.1.0"
