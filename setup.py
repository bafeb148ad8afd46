from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="transformers-mixedae",
    version="0.1.0.dev0",
    description="MixedAE and CAE masked-image-modeling models for Hugging Face transformers",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    package_dir={"": "src"},
    packages=find_packages("src"),
    package_data={
        "transformers_mixedae": [
            f"data/{folder}/*.{extension}" for folder in ("default", "default_dense") for extension in ("parquet", "json", "md")
        ]
    },
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "transformers>=5.23",
        "datasets>=5.2",
        "accelerate>=1.15",
        # StatefulDataLoader: each DataLoader worker's stream position, so a resumed run does not re-read its epoch.
        "torchdata>=0.11",
        "evaluate>=0.4.6",
        "huggingface_hub>=2.4",
        "safetensors>=0.8",
        "pillow>=10",
        "simplejpeg>=1.8",
        "numpy>=1.26",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        "dev": ["pytest>=8", "hypothesis>=6", "tensorboard"],
        "torchvision": ["torchvision"],
        "dall-e": ["dall-e"],
        "tensorboard": ["tensorboard"],
    },
    entry_points={
        "console_scripts": [
            "transformers-mixedae-convert-cae=transformers_mixedae.hub.convert_cae_checkpoint:main",
            "transformers-mixedae-export=transformers_mixedae.hub.export:main",
        ]
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
