"""The caption tokenizer: a SentencePiece model trained on the training captions.

It is saved inside every checkpoint as ``tokenizer.model`` (docs/DESIGN.md section 3). Special ids
are fixed so the decoder's config never depends on the trained vocabulary's order:
pad = 0, unk = 1, bos = 2, eos = 3.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from calmcap.errors import CheckpointError

if TYPE_CHECKING:  # pragma: no cover
    import torch  # imported where used: `import calmcap.tokenizer` stays torch-free

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


class CaptionTokenizer:
    """Thin wrapper over a ``sentencepiece.SentencePieceProcessor`` with our id conventions."""

    def __init__(self, model_proto: bytes) -> None:
        import sentencepiece as spm

        self._proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(self._proto)
        except (RuntimeError, OSError) as error:
            raise CheckpointError(f"invalid SentencePiece model ({error})") from None
        special = (self._sp.pad_id(), self._sp.unk_id(), self._sp.bos_id(), self._sp.eos_id())
        if special != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise CheckpointError("SentencePiece model has unexpected special ids (expected pad=0 unk=1 bos=2 eos=3)")

    # ------------------------------------------------------------------ building and saving

    @classmethod
    def train(cls, captions: Iterable[str], vocab_size: int = 8000, model_type: str = "unigram") -> CaptionTokenizer:
        """Train on captions. ``vocab_size`` is an upper bound: small corpora get fewer pieces."""
        import sentencepiece as spm

        sentences = [c.strip() for c in captions if c and c.strip()]
        if not sentences:
            raise ValueError("cannot train a caption tokenizer on zero captions")
        buffer = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=buffer,
            vocab_size=vocab_size,
            hard_vocab_limit=False,  # a small caption corpus may not support vocab_size pieces
            model_type=model_type,
            character_coverage=1.0,
            # Lower-case (nmt_nfkc_cf): the caption metrics' PTB tokenizer lower-cases anyway.
            normalization_rule_name="nmt_nfkc_cf",
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            num_threads=1,  # deterministic
            minloglevel=2,
        )
        return cls(buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> CaptionTokenizer:
        path = Path(path)
        try:
            return cls(path.read_bytes())
        except FileNotFoundError:
            raise CheckpointError(f"{path}: tokenizer file not found") from None
        except CheckpointError as error:
            raise CheckpointError(f"{path}: {error}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self._proto)

    @property
    def model_proto(self) -> bytes:
        return self._proto

    # ------------------------------------------------------------------ encoding

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        """``[bos] pieces [eos]``, truncated to ``max_length`` ids (eos kept at the end)."""
        ids = [BOS_ID, *self._sp.encode(text, out_type=int), EOS_ID]
        if max_length is not None and len(ids) > max_length:
            ids = ids[: max_length - 1] + [EOS_ID]
        return ids

    def batch_encode(self, texts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded ids [B, L] and attention mask [B, L] (L = longest in batch, at most max_length)."""
        import torch

        encoded = [self.encode(t, max_length) for t in texts]
        length = max(len(ids) for ids in encoded)
        ids = torch.full((len(encoded), length), PAD_ID, dtype=torch.long)
        mask = torch.zeros((len(encoded), length), dtype=torch.long)
        for row, seq in enumerate(encoded):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        return ids, mask

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ids, stopping at the first eos and skipping bos/pad."""
        pieces: list[int] = []
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            if i not in (PAD_ID, BOS_ID):
                pieces.append(i)
        return self._sp.decode(pieces)
