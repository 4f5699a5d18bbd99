"""Converters from public benchmarks' official annotation files to the manifest format.

One module per dataset (MSR-VTT, MSVD, DiDeMo, LSMDC, ActivityNet Captions, and a generic
CSV/JSON importer); :mod:`.prepare` runs one, locates the videos, and writes the manifest plus
its protocol sidecar. ``CONVERTERS[name](annotation_paths, **options)`` returns a
:class:`ConversionResult`.
"""

from calmcap.data.converters.base import ConversionResult
from calmcap.data.converters.prepare import (
    CONVERTERS,
    PrepareReport,
    prepare,
    protocol_path_for,
    read_protocol,
)

__all__ = [
    "CONVERTERS",
    "ConversionResult",
    "PrepareReport",
    "prepare",
    "protocol_path_for",
    "read_protocol",
]
