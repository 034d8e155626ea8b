"""dualml: one model definition, native PyTorch and PaddlePaddle modules, one canonical weight layout."""
from pathlib import Path

from setuptools import setup

here = Path(__file__).parent
TORCH = ["torch==2.13.0"]
PADDLE = ["paddlepaddle==2.6.2", "paddleslim==2.6.0", "paddle2onnx==1.3.1", "setuptools<81", "six",
          "requests", "decorator"]
EXPORT = ["onnx==1.17.0", "onnxruntime>=1.20,<1.32", "onnxscript>=0.5,<0.8"]
DEV = ["pytest", "ruff", "import-linter>=2.1"]

setup(
    name="dualml",
    version="0.1.0",
    description=__doc__,
    long_description=(here / "README.md").read_text(encoding="utf-8") if (here / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # configs/ ships inside the package as dualml/_configs, so a non-editable install finds its defaults
    packages=["dualml", "dualml.cli", "dualml.compress", "dualml.evidence", "dualml.onnx", "dualml.train",
              "dualml._configs", "dualml_torch", "dualml_paddle"],
    package_dir={"dualml": "dualml", "dualml._configs": "configs", "dualml_torch": "backends/dualml_torch",
                 "dualml_paddle": "backends/dualml_paddle"},
    package_data={"dualml._configs": ["*.yaml", "*/*.yaml"]},
    install_requires=["numpy>=1.24,<2", "omegaconf>=2.3", "safetensors>=0.4", "tqdm", "matplotlib",
                      "scikit-learn", "tensorboardX>=2.6"],
    extras_require={"torch": TORCH + EXPORT, "paddle": PADDLE + EXPORT, "all": TORCH + PADDLE + EXPORT,
                    "dev": TORCH + PADDLE + EXPORT + DEV},
    entry_points={
        "console_scripts": ["dualml=dualml.cli:main"],
        "dualml.backends": ["torch=dualml_torch", "paddle=dualml_paddle"],
    },
)
