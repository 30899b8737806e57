"""OCR family: text in images with RapidOCR (PaddleOCR models on ONNX Runtime).

One backend, ``rapidocr``. The source is a folder holding the three ONNX models (text
detection ``*det*.onnx``, direction classifier ``*cls*.onnx``, recognition ``*rec*.onnx``);
``package:rapidocr_onnxruntime`` is the folder that ships inside the pip package. The models
run on ONNX Runtime with ``threads`` intra-op threads, on CUDA where ``num_gpus`` > 0 and the
installed ONNX Runtime has the CUDA provider.

``ocr`` returns ``text`` (the lines, top to bottom, joined by newlines) and ``lines``:
``[{"text", "score", "box"}]`` with ``box`` the four corner points ``[[x, y], ...]`` in pixels
of the input image. ``options.text_score`` (default 0.5) drops lines recognised with a lower
confidence; ``options.use_cls`` (default true) toggles the 180° direction classifier.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from deployments.base import ModelBackend, Progress
from deployments.media import decode_image
from fusion.config import ModelConfig
from fusion.errors import SpecError
from fusion.registry import Family
from fusion.tasks import TaskSpec, param

log = logging.getLogger("fusion.deployments.ocr")


def _one_model(folder: Path, kind: str) -> Path:
    found = sorted(p for p in folder.glob("*.onnx") if f"_{kind}" in p.name)
    if len(found) != 1:
        raise SpecError(f"expected one *_{kind}*.onnx model in {folder}, found "
                        f"{[p.name for p in found]}")
    return found[0]


class OcrModel(ModelBackend):
    family = "ocr"
    marker_files = ("*_det_infer.onnx", "*det*.onnx")

    @classmethod
    def builds_torch_modules(cls, config: ModelConfig) -> bool:
        """ONNX Runtime sessions only: the load may run beside a torch model's."""
        return False

    def load_weights(self) -> None:
        if not self.resolved.local:
            raise SpecError(f"{self.config.name}: the rapidocr backend loads ONNX models from a "
                            "folder or package, not from a hub id")
        import onnxruntime
        from rapidocr_onnxruntime import RapidOCR

        folder = Path(self.resolved.location)
        cuda = self.device == "cuda" and (
            "CUDAExecutionProvider" in onnxruntime.get_available_providers())
        if self.device == "cuda" and not cuda:
            log.warning("%s: ONNX Runtime has no CUDA provider; OCR runs on CPU",
                        self.config.name)
        self.text_score = float(self.config.options.get("text_score", 0.5))
        self.engine = RapidOCR(
            det_model_path=str(_one_model(folder, "det")),
            cls_model_path=str(_one_model(folder, "cls")),
            rec_model_path=str(_one_model(folder, "rec")),
            det_use_cuda=cuda, cls_use_cuda=cuda, rec_use_cuda=cuda,
            use_cls=bool(self.config.options.get("use_cls", True)),
            text_score=self.text_score,
            intra_op_num_threads=self.config.threads, inter_op_num_threads=1)
        self.ocr_device = "cuda" if cuda else "cpu"

    def prepare(self, task: str, inputs: dict[str, Any]) -> dict[str, Any]:
        item = super().prepare(task, inputs)
        return {"image": decode_image(item["image"], field="image")}

    def run(self, task: str, items: list[Any], progress: Progress | None = None) -> list[dict]:
        self.task_spec(task)
        return [self._ocr(item["image"]) for item in items]

    def _ocr(self, image: Any) -> dict[str, Any]:
        result, _ = self.engine(image)  # a PIL RGB image; RapidOCR converts to BGR itself
        lines = [{"text": str(text),
                  "score": round(float(score), 4),
                  "box": [[round(float(x), 1), round(float(y), 1)] for x, y in box]}
                 for box, text, score in (result or [])]
        return {"text": "\n".join(line["text"] for line in lines), "lines": lines}

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["device"] = self.ocr_device
        info["dtype"] = "float32"
        return info


FAMILY = Family(
    name="ocr",
    tasks={"ocr": TaskSpec({"image": param("image")}, {"text": "text", "lines": "json"},
                           batched=False)},
    backends={"rapidocr": ("ocr",)},
    model=OcrModel,
)
