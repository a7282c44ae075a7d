"""Contact sheets: a few frames of several videos, each row captioned with its prompt and score."""

from __future__ import annotations

import io

import numpy as np

from ditproof.evaluation.adherence import AdherenceScore


def _marks(score: AdherenceScore | None) -> str:
    if score is None:
        return ""
    parts = []
    for obj in score.objects:
        found = obj.measured
        parts.append(
            f"colour {'ok' if obj.color else 'NO'} ({found.color if found else '-'}), "
            f"direction {'ok' if obj.direction else 'NO'} ({found.direction if found else '-'}), "
            f"shape {'ok' if obj.shape else 'NO'} ({found.shape if found else '-'})"
        )
    return "; ".join(parts)


def contact_sheet(
    rows: list[tuple[str, np.ndarray, AdherenceScore | None]], columns: int = 5, scale: int = 1, title: str = ""
) -> bytes:
    """A PNG with one row per video: ``columns`` evenly spaced frames under the prompt and measured marks.

    Args:
        rows: (prompt, uint8 frames (F, H, W, 3), score or None) per video.
        columns: frames shown per video.
        scale: integer upscaling of the frames (nearest neighbour).
        title: a line at the top.
    """
    from PIL import Image, ImageDraw

    frame_h, frame_w = rows[0][1].shape[1] * scale, rows[0][1].shape[2] * scale
    text_h, gap = 30, 4
    top = 20 if title else 0
    width = max(columns * (frame_w + gap) + gap, 640)
    sheet = Image.new("RGB", (width, top + len(rows) * (text_h + frame_h + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((gap, 4), title, fill="black")
    for r, (prompt, frames, score) in enumerate(rows):
        y = top + r * (text_h + frame_h + gap)
        draw.text((gap, y + 2), prompt, fill="black")
        draw.text((gap, y + 15), _marks(score), fill="#444444")
        picks = np.linspace(0, len(frames) - 1, columns).round().astype(int)
        for c, f in enumerate(picks):
            image = Image.fromarray(frames[f])
            if scale != 1:
                image = image.resize((frame_w, frame_h), Image.Resampling.NEAREST)
            sheet.paste(image, (gap + c * (frame_w + gap), y + text_h))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()
