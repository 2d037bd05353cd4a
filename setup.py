"""fcos-paddle. Paddle itself is not a hard requirement here so that an installed
``paddlepaddle-gpu`` is never replaced by the CPU wheel; ``make install`` installs
``paddlepaddle`` (or ``PADDLE=paddlepaddle-gpu``) when no Paddle is importable."""

from setuptools import find_packages, setup

setup(
    name="fcos-paddle",
    version="0.1.0",
    description="FCOS / FCOS_RT object detection on PaddlePaddle: models, checkpoint import, training, export, deploy",
    packages=find_packages(include=["fcos", "fcos.*"]),
    package_data={"fcos.ops": ["*.cc"]},  # compiled on first use (fcos/ops/onednn_conv.py)
    python_requires=">=3.9",
    install_requires=[
        "numpy>=1.21",
        "opencv-python-headless>=4.5,<5",
        "Pillow>=9.0",
        "PyYAML>=5.4",
        "pycocotools>=2.0.6",
        "tqdm>=4.60",
        "safetensors>=0.4",
        "matplotlib>=3.5",
        "visualdl>=2.5",
    ],
    extras_require={
        "dev": [
            "pytest>=7",
            "ruff>=0.5",
            "albumentations>=1.3",
            "paddle2onnx>=2.1",
            "onnxruntime>=1.16",
            "ml_dtypes>=0.2",
            "openvino>=2024.0",
            "nncf>=2.10",
        ],
        # ONNX export + ONNX Runtime (fp32, and int8 by tools/quantize.py --backend onnxruntime)
        "onnx": ["paddle2onnx>=2.1", "onnxruntime>=1.16", "ml_dtypes>=0.2"],
        # OpenVINO backend (fp32 from model.onnx; int8 by tools/quantize.py --backend openvino with NNCF)
        "openvino": ["openvino>=2024.0", "nncf>=2.10", "paddle2onnx>=2.1"],
        "aug": ["albumentations>=1.3"],
    },
)
