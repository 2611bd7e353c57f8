"""Fail when a figure of the example gallery is blank.

Run after the Sphinx build::

    python doc/check_images.py [doc/auto_examples/images]

Every PNG written by sphinx-gallery (``sphx_glr_*.png``, thumbnails included)
is loaded; an image is blank when its pixels are (nearly) all one colour: a
pixel standard deviation below ``STD_MIN`` or more than ``UNIFORM_MAX`` of the
pixels equal to the most common colour. Also fails when a page shows an image
that is missing, or when an executed example produced no figure at all while
its source calls a plotting function.
"""

import re
import sys
from pathlib import Path

import numpy as np
from matplotlib import image as mpimg

STD_MIN = 0.01  # on the 0..1 scale of matplotlib's PNG reader
UNIFORM_MAX = 0.995
RUNTIME = re.compile(r"Total running time of the script:\*\* \((\d+) minutes ([\d.]+) seconds\)")
PLOTS = re.compile(r"\bplot\w*\(|\.plot\w*\(|plt\.(subplots|figure)\(|\.imshow\(")
IMAGE_REF = re.compile(r"/auto_examples/images/(sphx_glr_\w+?\.png)")


def blank_reason(fname):
    """Why an image looks blank, or None."""
    img = mpimg.imread(fname)
    if img.ndim == 3 and img.shape[-1] == 4:  # composite on white, ignore alpha
        alpha = img[..., 3:]
        img = img[..., :3] * alpha + (1.0 - alpha)
    pixels = img.reshape(-1, img.shape[-1] if img.ndim == 3 else 1)
    std = float(pixels.std(axis=0).max())
    if std < STD_MIN:
        return f"pixel std {std:.2g} < {STD_MIN}"
    quant = np.round(pixels * 255).astype(np.int64)
    keys = quant @ (256 ** np.arange(quant.shape[1]))
    _, counts = np.unique(keys, return_counts=True)
    share = counts.max() / keys.size
    if share > UNIFORM_MAX:
        return f"{100 * share:.2f} % of the pixels have one colour"
    return None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    doc = Path(__file__).resolve().parent
    images = Path(argv[0]) if argv else doc / "auto_examples" / "images"
    pngs = sorted(images.rglob("sphx_glr_*.png"))
    if not pngs:
        print(f"check_images: no gallery images under {images}", file=sys.stderr)
        return 1
    problems = []
    for fname in pngs:
        reason = blank_reason(fname)
        if reason:
            problems.append(f"{fname.relative_to(images)}: {reason}")
    # executed examples whose code plots must have produced a figure
    gallery = images.parent
    examples = doc.parent / "examples"
    for src in sorted(examples.glob("[0-9][0-9]_*.py")):
        stem = src.stem
        rst = gallery / f"{stem}.rst"
        run = RUNTIME.search(rst.read_text(encoding="utf-8")) if rst.is_file() else None
        executed = run is not None and (int(run.group(1)), float(run.group(2))) != (0, 0.0)
        figures = list(images.glob(f"sphx_glr_{stem}_[0-9][0-9][0-9].png"))
        if executed and PLOTS.search(src.read_text(encoding="utf-8")) and not figures:
            problems.append(f"{stem}: plots in its code but produced no figure")
        if rst.is_file():
            for name in sorted(set(IMAGE_REF.findall(rst.read_text(encoding="utf-8")))):
                if not (images / name).is_file() and not (images / "thumb" / name).is_file():
                    problems.append(f"{stem}: its page shows {name}, which is missing")
    n_fig = sum(1 for p in pngs if "thumb" not in p.parts)
    if problems:
        print("check_images: blank or missing figures:\n  " + "\n  ".join(problems),
              file=sys.stderr)
        return 1
    print(f"check_images: {n_fig} figures and {len(pngs) - n_fig} thumbnails, none blank")
    return 0


if __name__ == "__main__":
    sys.exit(main())
