"""Where the time of a captioning or indexing run went: :class:`PipelineStats`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class PipelineStats:
    """Where the time of a captioning / indexing run went (seconds, wall clock).

    ``decode_seconds`` is the time spent decoding and preprocessing, wherever it ran (with
    overlap, in the background thread); ``decode_wait_seconds`` is the part of it the main
    thread actually waited for. ``import_seconds`` counts torch / open_clip / transformers.
    """

    videos: int = 0
    failed: int = 0
    import_seconds: float = 0.0
    load_seconds: float = 0.0
    decode_seconds: float = 0.0
    decode_wait_seconds: float = 0.0
    tower_seconds: float = 0.0
    decoder_seconds: float = 0.0
    wall_seconds: float = 0.0
    overlap: bool = True

    @property
    def videos_per_second(self) -> float:
        """Throughput over the whole run (start-up and model load included)."""
        return self.videos / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def processing_seconds(self) -> float:
        """Wall time after the model was ready (what a long batch converges to)."""
        return max(0.0, self.wall_seconds - self.import_seconds - self.load_seconds)

    @property
    def steady_videos_per_second(self) -> float:
        """Throughput once the model is loaded."""
        return self.videos / self.processing_seconds if self.processing_seconds > 0 else 0.0

    def summary(self) -> str:
        """One line for humans: throughput and the per-stage breakdown."""
        decoding = f"overlapped, waited {self.decode_wait_seconds:.2f} s" if self.overlap else "inline"
        return (
            f"{self.videos} video(s) in {self.wall_seconds:.2f} s ({self.videos_per_second:.2f} videos/s"
            f"{', ' + str(self.failed) + ' failed' if self.failed else ''}); "
            f"imports {self.import_seconds:.2f} s, load {self.load_seconds:.2f} s, "
            f"decode {self.decode_seconds:.2f} s ({decoding}), "
            f"image tower {self.tower_seconds:.2f} s, decoder {self.decoder_seconds:.2f} s"
        )

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["videos_per_second"] = self.videos_per_second
        out["steady_videos_per_second"] = self.steady_videos_per_second
        return out
