"""The errors that command-line tools print as one ``error: ...`` line (exit code 2) instead of a
traceback: bad input the user can fix (config, data, weights, files, sources). Anything else is a bug
and keeps its traceback."""

from __future__ import annotations


def user_errors() -> tuple[type[BaseException], ...]:
    """The library's exception types for bad user input, plus FileNotFoundError."""
    from fcos.checkpoint.convert_common import ConversionError
    from fcos.checkpoint.safe_pickle import UnsafeFileError
    from fcos.checkpoint.weights import WeightsError
    from fcos.config import ConfigError
    from fcos.data.annotations import AnnotationError
    from fcos.data.coco import DatasetError
    from fcos.data.image_io import ImageReadError
    from fcos.deploy.predictor import DeployError
    from fcos.engine.checkpoint import CheckpointError
    from fcos.inference.sources import SourceError
    from fcos.inference.video import VideoError
    from fcos.ops.onednn_conv import ConvBackendError

    return (
        ConfigError,
        DatasetError,
        AnnotationError,
        ImageReadError,
        WeightsError,
        ConversionError,
        UnsafeFileError,
        CheckpointError,
        SourceError,
        VideoError,
        DeployError,
        ConvBackendError,
        FileNotFoundError,
    )
