"""Rebuild samples/sample_faces.mp4 from the public-domain NASA portrait of Eileen Collins.

The photo ships inside scikit-image's wheel (skimage/data/astronaut.png):
    pip download --no-deps --only-binary=:all: scikit-image==0.26.0 -d /tmp/sk
    unzip -o /tmp/sk/scikit_image-*.whl skimage/data/astronaut.png -d /tmp/sk
    python samples/make_sample.py /tmp/sk/skimage/data/astronaut.png
A virtual camera pans and zooms over the still: the face moves, shrinks and grows, leaves the
view for a while (the shuttle model: a stretch with no face, a negative control) and comes back
mirrored.
"""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

WIDTH, HEIGHT, FPS, SECONDS = 480, 360, 15, 10


# (time s, centre x, centre y, zoom, mirrored): a virtual camera over the 512x512 photo.
KEYFRAMES = [
    (0.0, 224, 113, 3.0, False),  # close-up of the face
    (3.0, 256, 220, 1.45, False),  # zoom out to the whole portrait
    (4.5, 430, 330, 2.8, False),  # onto the shuttle model: no face in view
    (6.0, 430, 330, 2.8, False),
    (7.0, 256, 220, 1.45, False),  # back to the portrait
    (7.01, 256, 220, 1.45, True),  # mirrored, zooming in again
    (10.0, 288, 130, 2.4, True),
]


def camera_path(t: float) -> tuple[float, float, float, bool]:
    for (t0, *a), (t1, *b) in zip(KEYFRAMES, KEYFRAMES[1:]):
        if t <= t1:
            f = (t - t0) / (t1 - t0)
            cx, cy, zoom = (a[i] + f * (b[i] - a[i]) for i in range(3))
            scale = zoom * HEIGHT / 512
            half_w, half_h = WIDTH / 2 / scale, HEIGHT / 2 / scale  # keep the view inside the photo
            return min(max(cx, half_w), 512 - half_w), min(max(cy, half_h), 512 - half_h), zoom, b[3]
    return camera_path(KEYFRAMES[-1][0])


def main(photo: str, out: str = "samples/sample_faces.mp4") -> None:
    image = cv2.imread(photo, cv2.IMREAD_COLOR)
    if image is None:
        sys.exit(f"cannot read {photo}")
    mirrored = cv2.flip(image, 1)
    writer = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"mp4v"), FPS, (WIDTH, HEIGHT))
    for i in range(FPS * SECONDS):
        cx, cy, zoom, flip = camera_path(i / FPS)
        scale = zoom * HEIGHT / 512
        matrix = np.float32([[scale, 0, WIDTH / 2 - cx * scale], [0, scale, HEIGHT / 2 - cy * scale]])
        frame = cv2.warpAffine(mirrored if flip else image, matrix, (WIDTH, HEIGHT),
                               flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
        writer.write(frame)
    writer.release()
    print(f"wrote {out}: {FPS * SECONDS} frames, {WIDTH}x{HEIGHT} @ {FPS} fps")


if __name__ == "__main__":
    main(*sys.argv[1:])
