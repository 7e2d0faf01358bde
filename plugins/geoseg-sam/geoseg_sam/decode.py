"""Prompts into SAM's mask decoder, and its masks back out as one water probability per chip.

Every positive point becomes one prompt (with the chip's negative points attached), and so
does every box; all prompts of a chip go through the decoder in one batch against the
chip's single image embedding. SAM's masks per prompt are reduced to one (``multimask``),
and the prompts' masks are merged by score: the maximum over prompts of each mask's
probability weighted by its predicted IoU relative to the best-scored prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from geoseg.prompts import Prompts
from geoseg_sam.preprocess import ModelInput

#: SAM's label for padding points, ignored by the prompt encoder.
PAD_LABEL = -10
#: Lowest weight of a prompt's mask when merging by score.
MIN_SCORE = 1e-3


@dataclass
class PromptTensors:
    """Prompts of one kind in SAM's frame: P prompts of n points each, or P boxes."""

    points: np.ndarray | None = None  # (P, n, 2) float32
    labels: np.ndarray | None = None  # (P, n) int64, PAD_LABEL for padding
    boxes: np.ndarray | None = None  # (P, 4) float32

    def __len__(self) -> int:
        if self.boxes is not None:
            return len(self.boxes)
        return 0 if self.points is None else len(self.points)


def chip_prompt_sets(
    prompts: Prompts, frame: ModelInput, height: int, width: int
) -> list[PromptTensors]:
    """One PromptTensors for the point prompts and one for the box prompts that a chip has."""
    positive = prompts.points[prompts.labels == 1]
    negative = prompts.points[prompts.labels != 1]
    negative = frame.points(negative, height, width)
    sets = []
    if len(positive):
        pos = frame.points(positive, height, width)
        points = np.concatenate(
            [pos[:, None, :], np.broadcast_to(negative, (len(pos), *negative.shape))], axis=1
        )
        labels = np.zeros(points.shape[:2], np.int64)
        labels[:, 0] = 1
        sets.append(PromptTensors(points=points.astype(np.float32), labels=labels))
    if len(prompts.boxes):
        boxes = frame.boxes(prompts.boxes, height, width)
        if len(negative):
            points = np.broadcast_to(negative, (len(boxes), *negative.shape)).astype(np.float32)
            labels = np.zeros(points.shape[:2], np.int64)
            sets.append(PromptTensors(points=points, labels=labels, boxes=boxes))
        else:
            sets.append(PromptTensors(boxes=boxes))
    return sets


def pad_points(
    groups: list[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """Stack point groups of different lengths: (T, n, 2) and labels (T, n), padded with PAD_LABEL."""
    longest = max(len(p) for p, _ in groups)
    points = np.zeros((len(groups), longest, 2), np.float32)
    labels = np.full((len(groups), longest), PAD_LABEL, np.int64)
    for i, (p, lab) in enumerate(groups):
        points[i, : len(p)] = p
        labels[i, : len(lab)] = lab
    return points, labels


def run_decoder(
    model,
    embeddings: torch.Tensor,
    points: torch.Tensor | None,
    labels: torch.Tensor | None,
    boxes: torch.Tensor | None,
    multimask: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder logits (B, P, L, L) and predicted IoU (B, P) for image embeddings (B, C, h, w).

    ``points`` (B, P, n, 2), ``labels`` (B, P, n), ``boxes`` (B, P, 4) in SAM's frame.
    ``model`` is a SamModel (possibly wrapped for data parallelism).
    """
    output = model(
        image_embeddings=embeddings,
        input_points=points,
        input_labels=labels,
        input_boxes=boxes,
        multimask_output=multimask != "single",
    )
    logits, scores = output.pred_masks, output.iou_scores  # (B, P, K, L, L), (B, P, K)
    if multimask == "mean":
        return logits.mean(dim=2), scores.mean(dim=2)
    if multimask == "best":
        best = scores.detach().argmax(dim=2)
        index = best[..., None, None, None].expand(-1, -1, 1, *logits.shape[-2:])
        return logits.gather(2, index)[:, :, 0], scores.gather(2, best[..., None])[..., 0]
    return logits[:, :, 0], scores[:, :, 0]


def merge_by_score(probabilities: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """One (H, W) probability from P prompts' (P, H, W) probabilities and predicted IoUs (P,)."""
    weights = scores.float().clamp(MIN_SCORE, 1.0)
    weights = weights / weights.max()
    return (probabilities * weights[:, None, None]).amax(dim=0)


@torch.no_grad()
def segment_chip(
    model,
    embedding: torch.Tensor,
    prompts: Prompts,
    frame: ModelInput,
    height: int,
    width: int,
    multimask: str,
) -> torch.Tensor:
    """Water probability (H, W) float32 of one chip from its embedding (C, h, w) and prompts."""
    device = embedding.device
    all_probabilities, all_scores = [], []
    for prompt_set in chip_prompt_sets(prompts, frame, height, width):

        def tensor(array, dtype):
            return (
                None if array is None else torch.as_tensor(array, dtype=dtype, device=device)[None]
            )

        logits, scores = run_decoder(
            model,
            embedding[None],
            tensor(prompt_set.points, torch.float32),
            tensor(prompt_set.labels, torch.long),
            tensor(prompt_set.boxes, torch.float32),
            multimask,
        )
        all_probabilities.append(torch.sigmoid(frame.masks_to_chip(logits[0], height, width)))
        all_scores.append(scores[0])
    if not all_probabilities:
        return torch.zeros((height, width), dtype=torch.float32, device=device)
    return merge_by_score(torch.cat(all_probabilities), torch.cat(all_scores))
