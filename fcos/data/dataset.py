"""The detection dataset the loaders draw from: a COCO dataset + the train or test transform -> :class:`Sample`.

Train mode: optional albumentations, a random short side from ``input.train_shorts`` (long side capped
at ``input.train_max``) and a random horizontal flip. Every random draw comes from an explicit
``np.random.Generator`` built from the key the loader passes (``dataset[(index, aug_seed)]``), so a
sample is a pure function of (index, aug_seed) whichever worker process makes it.

Test mode: short side ``input.test_short``, long side capped at ``input.test_max``; no randomness.

Images go through :mod:`fcos.data.image_io` (EXIF orientation applied, any colour model -> BGR uint8)
and :mod:`fcos.data.preprocess` (the same resize and normalisation as inference and deployment).
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Union

import numpy as np
import paddle

from fcos.config import DatasetSplit, InputConfig
from fcos.data.batch import Sample
from fcos.data.coco import CocoDetection, LabelMap
from fcos.data.image_io import ImageReadError
from fcos.data.transforms import (
    AlbumentationsTransform,
    build_albumentations,
    clean_boxes,
    resize_with_boxes,
    train_transform,
)

logger = logging.getLogger(__name__)

Key = Union[int, tuple[int, int]]


class DetectionDataset(paddle.io.Dataset):
    """COCO images + annotations -> preprocessed :class:`Sample` objects.

    Args:
        split: image directory and COCO annotation file.
        input_cfg: the shared preprocessing settings (sizes, mean/std, channel order).
        train: train transform (random size + flip) or test transform.
        label_map: contiguous label <-> category id <-> name; default: from the JSON (category-id order).
            Pass the training set's map to a validation set so both use the same labels.
        flip_prob: probability of a horizontal flip (train mode).
        albumentations: ``[{name: ClassName, **kwargs}, ...]`` (or a built transform), train mode only.
        class_names: if given, must equal the JSON category names in label order (catches mix-ups).
        drop_images_without_boxes: train mode: index only the images that have boxes.
        empty_image_rule: what "has boxes" means (fcos.data.coco: each reference's rule).
        drop_zero_area: leave out annotations whose JSON area is <= 0 (PaddleDetection).
        box_decimals: round loaded box corners to this many decimals (PaddleDetection: 3; -1 keeps them).

    ``dataset[i]`` or ``dataset[(i, aug_seed)]`` returns a :class:`Sample` (or None in test mode when
    the image file is unreadable: the loader leaves it out and logs its path). In train mode an
    unreadable image is replaced by the next readable one (deterministically) and logged once.
    """

    def __init__(
        self,
        split: DatasetSplit,
        input_cfg: InputConfig,
        train: bool,
        label_map: Optional[LabelMap] = None,
        flip_prob: float = 0.5,
        albumentations: Optional[Union[list[dict[str, Any]], AlbumentationsTransform]] = None,
        class_names: Optional[list[str]] = None,
        drop_images_without_boxes: bool = False,
        empty_image_rule: str = "valid_box",
        drop_zero_area: bool = False,
        box_decimals: int = -1,
    ) -> None:
        super().__init__()
        self.split = split
        self.input_cfg = input_cfg
        self.train = bool(train)
        self.flip_prob = float(flip_prob)
        self.coco = CocoDetection(
            split.image_dir,
            split.ann_file,
            class_names=class_names,
            label_map=label_map,
            drop_zero_area=drop_zero_area,
            box_decimals=box_decimals,
        )
        if isinstance(albumentations, AlbumentationsTransform):
            self.album: Optional[AlbumentationsTransform] = albumentations
        else:
            self.album = build_albumentations(albumentations) if (train and albumentations) else None
        self._bad: set[int] = set()
        # dataset position -> image index of the COCO file
        self._index = list(range(len(self.coco)))
        if self.train and drop_images_without_boxes:
            self._index = [i for i in self._index if self.coco.has_boxes(i, empty_image_rule)]
            dropped = len(self.coco) - len(self._index)
            if dropped:
                logger.info(
                    "%s: %d of %d images have no boxes (rule %s) and are left out of training",
                    split.ann_file,
                    dropped,
                    len(self.coco),
                    empty_image_rule,
                )

    # -- metadata -------------------------------------------------------------------------------
    @property
    def label_map(self) -> LabelMap:
        return self.coco.label_map

    @property
    def class_names(self) -> list[str]:
        return self.coco.class_names

    @property
    def num_classes(self) -> int:
        return self.coco.num_classes

    def __len__(self) -> int:
        return len(self._index)

    def record(self, index: int) -> dict[str, Any]:
        """The annotation record of sample ``index`` (see :meth:`CocoDetection.get_record`): boxes xyxy in the
        original image's pixels before any transform."""
        return self.coco.get_record(self._index[index])

    def image_sizes(self) -> np.ndarray:
        """(N, 2) int64 (height, width) of every sample in dataset order, as the annotation file gives them (read
        from the file header where the JSON has none); no image is decoded."""
        return np.asarray([self.coco.image_size(i) for i in self._index], dtype=np.int64).reshape(-1, 2)

    # -- samples --------------------------------------------------------------------------------
    def __getitem__(self, key: Key) -> Optional[Sample]:
        if isinstance(key, (tuple, list)):
            index, aug_seed = int(key[0]), int(key[1])
        else:
            index, aug_seed = int(key), int(key)
        return self.get(index, np.random.default_rng(aug_seed))

    def get(self, index: int, rng: Optional[np.random.Generator] = None) -> Optional[Sample]:
        """Sample ``index``; ``rng`` drives the train-mode augmentation (default: seeded by ``index``)."""
        n = len(self._index)
        if not 0 <= index < n:
            raise IndexError(f"{self.split.ann_file}: index {index} out of range for {n} images")
        if rng is None:
            rng = np.random.default_rng(index)
        if not self.train:
            try:
                return self._make(self._index[index], rng)
            except ImageReadError as e:
                self._warn_bad(self._index[index], e)
                return None
        for k in range(n):  # train: fall back to the next readable image, the same one on every run
            j = self._index[(index + k) % n]
            try:
                return self._make(j, rng)
            except ImageReadError as e:
                self._warn_bad(j, e)
        raise RuntimeError(f"{self.split.ann_file}: none of the {n} images in {self.split.image_dir} can be read")

    def _warn_bad(self, index: int, err: ImageReadError) -> None:
        if index not in self._bad:
            self._bad.add(index)
            logger.warning("skipping unreadable image %s", err)

    def _make(self, index: int, rng: np.random.Generator) -> Sample:
        rec = self.coco.get_record(index)
        img = self.coco.load_image(index)  # BGR uint8 (H, W, 3), EXIF-oriented
        h0, w0 = img.shape[:2]
        boxes, labels = rec["boxes"], rec["labels"]
        if (h0, w0) != (rec["height"], rec["width"]):
            # the JSON size disagrees with the file (check_dataset reports it); boxes are clipped to the file
            boxes, labels = clean_boxes(boxes, labels, h0, w0)
        cfg = self.input_cfg
        if self.train:
            image, boxes, labels, scale = train_transform(img, boxes, labels, rng, cfg, self.flip_prob, self.album)
        else:
            image, boxes, scale = resize_with_boxes(img, boxes, cfg.test_short, cfg.test_max, cfg)
            boxes, labels = clean_boxes(boxes, labels, image.shape[1], image.shape[2])
        return Sample(
            image=image,
            boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            labels=np.asarray(labels, dtype=np.int64).reshape(-1),
            scale=(float(scale[0]), float(scale[1])),
            orig_shape=(int(h0), int(w0)),
            image_id=int(rec["image_id"]),
            path=rec["path"],
        )
