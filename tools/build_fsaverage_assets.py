"""Build the embedded fsaverage head model shipped in ``mne_learned_mm/_assets``.

Everything comes from data that ships inside PyPI packages, so the build is
offline and reproducible:

* cortical surfaces (white, pial, inflated, sphere, curv, sulc) of fsaverage5
  from nilearn's package data (``nilearn/datasets/data/fsaverage5``). The
  fsaverage5 mesh is the icosahedron of order 5; its vertices are the first
  10242 vertices of fsaverage, so ico3 source vertex numbers (0-641) are the
  same as on the full fsaverage.
* the fsaverage inner skull (ico5) and scalp ("head") surfaces that MNE ships
  in ``mne/data/fsaverage``.
* the outer skull, which is not shipped offline anywhere, is *derived*: see
  :func:`outer_skull_radii`.

All three BEM surfaces are re-meshed on the same order-4 icosahedron (2562
vertices) by casting rays from a common centre (the inner-skull centroid) and
intersecting them with the source surfaces (outermost hit). On a shared
triangulation, strictly increasing radii per ray guarantee nested,
non-intersecting surfaces.

Outer skull: ``r_os = r_is + 7 mm`` along each ray, then limited so that it
stays at least 3 mm inside the scalp, and at least 2 mm outside the inner
skull. The script prints the resulting skull and scalp thickness statistics.

Usage (needs nilearn, a tool-time dependency only)::

    python tools/build_fsaverage_assets.py
"""

import io
import json
import os.path as op
import tarfile
import tempfile
from pathlib import Path

import mne
import nibabel as nib
import numpy as np

SKULL_THICKNESS_MM = 7.0
MIN_SCALP_GAP_MM = 3.0
MIN_SKULL_MM = 2.0
ICO_GRADE = 4

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "mne_learned_mm" / "_assets"


def _nilearn_fs5_dir():
    import nilearn

    return Path(nilearn.__file__).parent / "datasets" / "data" / "fsaverage5"


def _read_gifti(fname):
    darrays = nib.load(str(fname)).darrays
    if len(darrays) == 2:
        return darrays[0].data.astype(np.float64), darrays[1].data.astype(np.int32)
    return darrays[0].data.astype(np.float32)


def ray_mesh_radii(center, directions, rr, tris):
    """Distance from ``center`` along each unit direction to the outermost hit.

    Möller–Trumbore intersection, vectorised over triangles.
    """
    v0, v1, v2 = rr[tris[:, 0]], rr[tris[:, 1]], rr[tris[:, 2]]
    e1, e2 = v1 - v0, v2 - v0
    tvec = center - v0
    radii = np.empty(len(directions))
    for k, d in enumerate(directions):
        pvec = np.cross(d, e2)
        det = np.einsum("ij,ij->i", e1, pvec)
        ok = np.abs(det) > 1e-12
        inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
        u = np.einsum("ij,ij->i", tvec, pvec) * inv
        qvec = np.cross(tvec, e1)
        v = (qvec @ d) * inv
        t = np.einsum("ij,ij->i", e2, qvec) * inv
        hit = ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
        if not hit.any():
            raise RuntimeError(f"ray {k} does not hit the surface")
        radii[k] = t[hit].max()
    return radii


def outer_skull_radii(r_inner, r_scalp):
    """Outer-skull radii from inner-skull and scalp radii (mm), per ray."""
    r_os = np.minimum(r_inner + SKULL_THICKNESS_MM, r_scalp - MIN_SCALP_GAP_MM)
    if np.any(r_os - r_inner < MIN_SKULL_MM):
        raise RuntimeError("scalp too close to the inner skull for a skull layer")
    return r_os


def build_bem_surfaces(out_dir):
    fs_dir = Path(mne.__file__).parent / "data" / "fsaverage"
    inner = mne.read_bem_surfaces(fs_dir / "fsaverage-inner_skull-bem.fif", verbose=False)[0]
    head = mne.read_bem_surfaces(fs_dir / "fsaverage-head.fif", verbose=False)[0]
    ico = mne.surface._get_ico_surface(ICO_GRADE)
    dirs = ico["rr"] / np.linalg.norm(ico["rr"], axis=1, keepdims=True)
    inner_mm, head_mm = inner["rr"] * 1e3, head["rr"] * 1e3
    center = inner_mm.mean(axis=0)
    r_is = ray_mesh_radii(center, dirs, inner_mm, inner["tris"])
    r_sc = ray_mesh_radii(center, dirs, head_mm, head["tris"])
    r_os = outer_skull_radii(r_is, r_sc)
    stats = {
        "center_mm": center.round(2).tolist(),
        "skull_thickness_mm": _describe(r_os - r_is),
        "scalp_thickness_mm": _describe(r_sc - r_os),
        "n_vertices_per_surface": int(len(dirs)),
    }
    for name, radii in [("inner_skull", r_is), ("outer_skull", r_os), ("outer_skin", r_sc)]:
        rr = center + dirs * radii[:, None]
        nib.freesurfer.write_geometry(str(out_dir / f"{name}.surf"), rr, ico["tris"])
    return stats


def _describe(x):
    return {k: round(float(f(x)), 2) for k, f in
            [("min", np.min), ("median", np.median), ("max", np.max)]}


def build_cortex(out_dir):
    src = _nilearn_fs5_dir()
    names = {"white": "white_{}.gii.gz", "pial": "pial_{}.gii.gz",
             "inflated": "infl_{}.gii.gz", "sphere": "sphere_{}.gii.gz"}
    for hemi, long in [("lh", "left"), ("rh", "right")]:
        for fs_name, pattern in names.items():
            rr, tris = _read_gifti(src / pattern.format(long))
            nib.freesurfer.write_geometry(str(out_dir / f"{hemi}.{fs_name}"), rr, tris)
            if fs_name == "sphere":  # fsaverage is its own registration target
                nib.freesurfer.write_geometry(str(out_dir / f"{hemi}.sphere.reg"), rr, tris)
        for morph in ("curv", "sulc"):
            data = _read_gifti(src / f"{morph}_{long}.gii.gz")
            nib.freesurfer.write_morph_data(str(out_dir / f"{hemi}.{morph}"), data)


def build_archive():
    with tempfile.TemporaryDirectory() as tmp:
        subj = Path(tmp) / "fsaverage"
        (subj / "surf").mkdir(parents=True)
        (subj / "bem").mkdir()
        build_cortex(subj / "surf")
        stats = build_bem_surfaces(subj / "bem")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for path in sorted(subj.rglob("*")):
                info = tar.gettarinfo(str(path), arcname=str(path.relative_to(tmp)))
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                if path.is_file():
                    with open(path, "rb") as fid:
                        tar.addfile(info, fid)
                else:
                    tar.addfile(info)
        (ASSETS / "fsaverage_head.tar.gz").write_bytes(buf.getvalue())
    return stats


def main():
    ASSETS.mkdir(parents=True, exist_ok=True)
    stats = build_archive()
    stats["nilearn_version"] = __import__("nilearn").__version__
    stats["mne_version"] = mne.__version__
    with open(ASSETS / "fsaverage_head.json", "w") as fid:
        json.dump(stats, fid, indent=2)
    print(json.dumps(stats, indent=2))
    # default forward: built by the package itself from the fresh archive
    from mne_learned_mm import head

    subjects_dir = head.fetch_fsaverage_head(source="embedded")
    fwd = head._compute_forward(head.default_info(), subjects_dir, "ico3", "embedded")
    out = ASSETS / head.DEFAULT_FWD_FNAME
    mne.write_forward_solution(out, fwd, overwrite=True)
    print(f"wrote {out} ({op.getsize(out) / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
