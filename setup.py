from setuptools import find_packages, setup

setup(
    name="mamba-hubert",
    version="0.1.0",
    description="A fairseq plugin: HuBERT with Mamba (selective state space) encoders, and layer-wise MI analysis",
    license="MIT",
    python_requires=">=3.11",
    packages=find_packages(include=["mamba_hubert", "mamba_hubert.*"]),
    package_data={"mamba_hubert.ops": ["csrc/*.cpp"], "mamba_hubert.data": ["default_voices.txt"]},
    # torch and fairseq are installed by scripts/setup_venv.sh in a fixed order (CPU torch first, fairseq-fixed
    # without build isolation); listing them here would let pip pull a CUDA torch.
    install_requires=["numpy", "soundfile", "soxr", "joblib", "scikit-learn", "kaldi-native-fbank", "matplotlib",
                      "editdistance", "onnx", "onnxruntime", "faster-whisper", "pocketsphinx"],
    extras_require={"cuda": ["mamba-ssm>=2.2", "causal-conv1d>=1.4"]},
    entry_points={
        "console_scripts": [
            "mamba-hubert-params=mamba_hubert.models.param_count:main",
            "mamba-hubert-corpus=mamba_hubert.data.corpus:main",
            "mamba-hubert-librispeech=mamba_hubert.data.librispeech:main",
            "mamba-hubert-mfcc=mamba_hubert.data.mfcc:main",
            "mamba-hubert-kmeans=mamba_hubert.data.kmeans:main",
            "mamba-hubert-layer-features=mamba_hubert.data.layer_features:main",
            "mamba-hubert-lm=mamba_hubert.data.ngram_lm:main",
            "mamba-hubert-check=mamba_hubert.data.check:main",
            "mamba-hubert-mi=mamba_hubert.analysis.cli:main",
            "mamba-hubert-transcribe=mamba_hubert.inference.transcribe:main",
            "mamba-hubert-paper=mamba_hubert.demo.paper:main",
        ]
    },
)
