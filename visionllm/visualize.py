"""Pictures of answers: boxes and polygons with their labels drawn on the image."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40)]


def draw_answer(image: Image.Image, answer: dict, out_path: str | Path | None = None) -> Image.Image:
    """Draw ``answer["objects"]`` (bbox and/or polygon, label, score) and any text on a copy of the image."""
    img = image.convert("RGB").copy()
    scale = max(1, round(max(img.size) / 320))
    if max(img.size) < 320:  # small images: upscale so labels stay readable
        f = 320 / max(img.size)
        img = img.resize((round(img.width * f), round(img.height * f)), Image.BICUBIC)
    else:
        f = 1.0
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    labels = sorted({o["label"] for o in answer.get("objects", [])})
    for o in answer.get("objects", []):
        color = PALETTE[labels.index(o["label"]) % len(PALETTE)]
        if o.get("polygon"):
            pts = [(x * f, y * f) for x, y in o["polygon"]]
            draw.polygon(pts, outline=color, width=2 * scale)
        x1, y1, x2, y2 = (v * f for v in o["bbox"])
        if not o.get("polygon"):
            draw.rectangle([x1, y1, x2, y2], outline=color, width=2 * scale)
        text = f"{o['label']} {o['score']:.2f}"
        tb = draw.textbbox((x1, y1), text, font=font)
        draw.rectangle([tb[0], tb[1] - 1, tb[2] + 2, tb[3] + 1], fill=color)
        draw.text((x1 + 1, y1), text, fill=(255, 255, 255), font=font)
    if answer.get("text") and not answer.get("objects"):
        draw.rectangle([0, 0, img.width, 14], fill=(0, 0, 0))
        draw.text((2, 1), answer["text"][:120], fill=(255, 255, 255), font=font)
    if out_path:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        img.save(out_path)
    return img
