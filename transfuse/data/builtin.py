"""Built-in datasets made from real images that ship inside installed Python packages.

Nothing is downloaded: every pixel comes from files bundled with nilearn, spm-runtime,
pydicom / pydicom-data and scikit-image. Each dataset is generated deterministically from
``spec.split_seed`` (``numpy.random.default_rng``) in a few seconds and cached as ``.npz`` under
``$TRANSFUSE_CACHE`` (default ``~/.cache/transfuse``), keyed by name, parameters, seed and
:data:`VERSION`. See ``docs/DATASETS.md`` for sources, licences, class counts and leakage rules.

``builtin:brain_tissue``
    4-class tissue at the centre of a 32×32 patch of an axial T1-weighted brain slice
    (background / grey matter / white matter / CSF). Train and val patches come from the nilearn
    MNI152 (ICBM 2009a) T1 template, from disjoint blocks of slices; test patches come from a
    different real T1 image, SPM's ``single_subj_T1`` (Colin27).

``builtin:modality``
    7-class imaging modality (CT, MR, XR, US, NM, histology, fundus) of 64×64 grayscale crops of
    DICOM test files (pydicom, pydicom-data) and scikit-image sample images. Where a class has two
    or more source images, train and test use different source images; NM and histology have a
    single source image each, and their train / val / test crops come from disjoint regions of it.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DataSpec
from ..errors import DataError
from .builtin_cache import SPLITS, VERSION, _cache_path, _need, _raw, cache_dir, cached_arrays  # noqa: F401
from .registry import RawData, register_dataset

__all__ = [
    "VERSION",
    "BRAIN_CLASSES",
    "MODALITY_CLASSES",
    "MODALITY_SOURCES",
    "cache_dir",
    "cached_arrays",
    "make_brain_tissue",
    "make_modality",
    "load_brain_tissue",
    "load_modality",
]



# --------------------------------------------------------------------------------------------
# builtin:brain_tissue
# --------------------------------------------------------------------------------------------

BRAIN = "builtin:brain_tissue"
BRAIN_CLASSES = ("background", "grey_matter", "white_matter", "csf")
_SPM_ROOT = "fsroot/_spm/cleaned/spm/"


def _spm_image(member: str) -> Any:
    """A NIfTI file from inside spm-runtime's MATLAB archive (``_spm/_spm.ctf`` is a zip)."""
    import zipfile

    import importlib.util

    nib = _need("nibabel", BRAIN, "nibabel")
    # Locate the package without importing it (its __init__ sets up the MATLAB runtime).
    found = importlib.util.find_spec("spm_runtime")
    if found is None or not found.submodule_search_locations:
        raise DataError(f"{BRAIN} needs spm-runtime; pip install --no-deps spm-runtime")
    ctf = Path(list(found.submodule_search_locations)[0]) / "_spm" / "_spm.ctf"
    try:
        with zipfile.ZipFile(ctf) as z:
            data = z.read(_SPM_ROOT + member)
    except (OSError, KeyError, zipfile.BadZipFile):
        raise DataError(f"{BRAIN} needs spm/{member} from spm-runtime ({ctf} is missing or "
                        "incomplete); pip install --no-deps spm-runtime") from None
    return nib.as_closest_canonical(nib.Nifti1Image.from_bytes(data))


def _resample(src: Any, target: Any, channels: tuple[int, ...] = (0,)) -> np.ndarray:
    """Trilinearly resample ``channels`` of ``src`` (3D or 4D) onto ``target``'s voxel grid.

    Both images carry MNI-space affines; the voxel-to-voxel map is ``inv(src.affine) @
    target.affine``. Returns ``target.shape[:3] + (len(channels),)`` float32.
    """
    from scipy import ndimage

    a = np.linalg.inv(src.affine) @ target.affine
    data = np.asarray(src.dataobj, dtype=np.float32)
    if data.ndim == 3:
        data = data[..., None]
    return np.stack([ndimage.affine_transform(data[..., c], a[:3, :3], a[:3, 3],
                                              output_shape=target.shape[:3], order=1, cval=0.0)
                     for c in channels], axis=-1)


def _tissue_labels(gm: np.ndarray, wm: np.ndarray, csf: np.ndarray) -> np.ndarray:
    """Argmax of GM/WM/CSF (1/2/3); 0 (background) where GM+WM+CSF < 0.5."""
    lab = np.argmax(np.stack([gm, wm, csf], axis=-1), axis=-1).astype(np.int64) + 1
    lab[(gm + wm + csf) < 0.5] = 0
    return lab


def _to_uint8(volume: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Skull-strip (zero outside ``mask``) and scale so the 99.5th in-mask percentile is 255."""
    v = np.where(mask, volume.astype(np.float32), 0.0)
    hi = float(np.percentile(v[mask], 99.5))
    return np.clip(np.rint(v / max(hi, 1e-6) * 255.0), 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=1)
def _brain_volumes() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``((train_img, train_lab), (test_img, test_lab))`` as RAS-ordered uint8 / int64 volumes."""
    nib = _need("nibabel", BRAIN, "nibabel")
    _need("scipy", BRAIN, "scipy")
    nds = _need("nilearn.datasets", BRAIN, "nilearn")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            t1 = nib.as_closest_canonical(nds.load_mni152_template(resolution=2))
            gm = nib.as_closest_canonical(nds.load_mni152_gm_template(resolution=2))
            wm = nib.as_closest_canonical(nds.load_mni152_wm_template(resolution=2))
        except Exception as e:  # template files missing from the nilearn install
            raise DataError(f"{BRAIN} needs nilearn's bundled MNI152 templates ({e}); "
                            "pip install nilearn") from None
    tpm = _spm_image("tpm/TPM.nii")  # 6 channels: GM, WM, CSF, bone, soft tissue, air
    colin = _spm_image("canonical/single_subj_T1.nii")

    # Train image: nilearn's own GM/WM maps (same space and subjects as its T1); nilearn ships
    # no CSF map, so CSF comes from SPM's TPM resampled into the nilearn grid.
    # The nilearn T1 is already skull-stripped by its provider: voxels it zeroed are background.
    t1_data = np.asarray(t1.dataobj, np.float32)
    csf = _resample(tpm, t1, channels=(2,))[..., 0]
    lab_tr = _tissue_labels(np.asarray(gm.dataobj, np.float32),
                            np.asarray(wm.dataobj, np.float32), csf)
    lab_tr[t1_data <= 0.02 * t1_data.max()] = 0
    img_tr = _to_uint8(t1_data, lab_tr > 0)
    # Test image: Colin27; GM/WM/CSF all from TPM resampled into Colin27's own grid.
    p = _resample(tpm, colin, channels=(0, 1, 2))
    lab_te = _tissue_labels(p[..., 0], p[..., 1], p[..., 2])
    img_te = _to_uint8(np.asarray(colin.dataobj, np.float32), lab_te > 0)
    return (img_tr, lab_tr), (img_te, lab_te)


def _brain_slices(lab: np.ndarray, min_voxels: int = 200) -> np.ndarray:
    """Axial slice indices holding at least ``min_voxels`` brain voxels."""
    return np.flatnonzero((lab > 0).sum(axis=(0, 1)) >= min_voxels)


def _sample_patches(img: np.ndarray, lab: np.ndarray, slices: np.ndarray, n_per_class: int,
                    patch: int, rng: np.random.Generator,
                    near: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """``n_per_class`` patches per class, centred on voxels of that class in ``slices``.

    Background centres are restricted to non-brain voxels within ``near`` in-plane voxels of the
    brain, so background patches always show some brain edge rather than empty space. A patch
    covers rows/cols ``[c - patch//2, c + patch//2)``; the slice is zero-padded at its border.
    """
    from scipy import ndimage

    h = patch // 2
    brain = lab[:, :, slices] > 0
    ring = np.stack([ndimage.binary_dilation(brain[:, :, i], iterations=near) & ~brain[:, :, i]
                     for i in range(len(slices))], axis=-1)
    sub = lab[:, :, slices]
    padded = np.pad(img[:, :, slices], ((h, h), (h, h), (0, 0)))
    xs, ys = [], []
    for c in range(len(BRAIN_CLASSES)):
        cand = np.argwhere(ring if c == 0 else sub == c)
        if len(cand) == 0:
            raise DataError(f"{BRAIN}: no voxels of class {BRAIN_CLASSES[c]} in the chosen slices")
        pick = cand[rng.choice(len(cand), n_per_class, replace=len(cand) < n_per_class)]
        for i, j, k in pick:
            xs.append(padded[i:i + patch, j:j + patch, k])
        ys += [c] * n_per_class
    return np.stack(xs)[:, None].astype(np.uint8), np.asarray(ys, dtype=np.int64)


def _brain_slice_split(z: np.ndarray, rng: np.random.Generator, val_blocks: int = 4,
                       block: int = 3, guard: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Split consecutive slice indices ``z`` into ``(train_z, val_z)``.

    ``z`` is cut into chunks of ``block + 2 * guard`` consecutive slices; ``val_blocks`` chunks
    are drawn at random; their middle ``block`` slices are validation and their ``guard`` slices
    on either side are used by neither split. Every other slice is training.
    """
    width = block + 2 * guard
    chunks = [z[i:i + width] for i in range(0, len(z) - width + 1, width)]
    chosen = sorted(rng.choice(len(chunks), val_blocks, replace=False).tolist())
    val_z = np.concatenate([chunks[i][guard:guard + block] for i in chosen])
    train_z = np.setdiff1d(z, np.concatenate([chunks[i] for i in chosen]))
    return train_z, val_z


def make_brain_tissue(seed: int = 0, *, patch: int = 32, n_train: int = 800, n_val: int = 125,
                      n_test: int = 125, val_blocks: int = 4, block: int = 3,
                      guard: int = 2) -> dict[str, np.ndarray]:
    """Generate ``builtin:brain_tissue`` (no caching; see :func:`load_brain_tissue`).

    Args:
        seed: seeds the val slice blocks and every patch centre.
        patch: patch side in voxels (2 mm voxels).
        n_train, n_val, n_test: patches per class and split.
        val_blocks: number of blocks of ``block`` consecutive axial slices of the train image
            used for validation; ``guard`` slices on each side of a block are used by neither.

    Returns:
        ``{train,val,test}_x`` uint8 ``(N, 1, patch, patch)`` and ``{train,val,test}_y`` int64.
    """
    rng = np.random.default_rng(seed)
    (img_tr, lab_tr), (img_te, lab_te) = _brain_volumes()
    train_z, val_z = _brain_slice_split(_brain_slices(lab_tr), rng, val_blocks, block, guard)
    out: dict[str, np.ndarray] = {}
    out["train_x"], out["train_y"] = _sample_patches(img_tr, lab_tr, train_z, n_train, patch, rng)
    out["val_x"], out["val_y"] = _sample_patches(img_tr, lab_tr, val_z, n_val, patch, rng)
    out["test_x"], out["test_y"] = _sample_patches(img_te, lab_te, _brain_slices(lab_te), n_test,
                                                   patch, rng)
    return out


_BRAIN_SOURCE = (
    "train/val: nilearn MNI152 ICBM 2009a T1 template at 2 mm "
    "(nilearn.datasets.load_mni152_template(resolution=2)) with nilearn's GM/WM templates and SPM12 "
    "TPM.nii CSF; test: SPM canonical/single_subj_T1.nii (Colin27) with SPM12 TPM.nii GM/WM/CSF "
    "(spm-runtime)"
)
_BRAIN_LICENSE = (
    "ICBM 2009a template (bundled with nilearn, BSD-3-Clause): Copyright (C) 1993-2009 Louis "
    "Collins, McConnell Brain Imaging Centre, MNI, McGill University, free use with notice; "
    "SPM12 single_subj_T1 and TPM.nii (spm-runtime): GPL-2.0; TPM built from IXI scans (CC BY-SA 3.0)"
)


@register_dataset(BRAIN, description="brain MRI tissue at patch centre (bg/GM/WM/CSF), 32x32 T1 "
                  "patches; train nilearn MNI152, test SPM Colin27", task="multiclass",
                  classes=BRAIN_CLASSES, spatial_dims=2, image_size=32, channels=1)
def load_brain_tissue(spec: DataSpec, arg: str = "") -> RawData:
    """Loader for ``builtin:brain_tissue`` (cached; generated from ``spec.split_seed``)."""
    params = {"patch": 32, "n_train": 800, "n_val": 125, "n_test": 125, "val_blocks": 4,
              "block": 3, "guard": 2}
    arrays = cached_arrays(BRAIN, params, spec.split_seed,
                           lambda: make_brain_tissue(spec.split_seed, **params))
    origins = {"train": f"{BRAIN} (nilearn MNI152 T1, train slices)",
               "val": f"{BRAIN} (nilearn MNI152 T1, held-out slice blocks)",
               "test": f"{BRAIN} (SPM single_subj_T1 / Colin27)"}
    return _raw(BRAIN, arrays, BRAIN_CLASSES, origins, _BRAIN_SOURCE, _BRAIN_LICENSE,
                "Tissue class (background, grey matter, white matter, CSF) at the centre of a "
                "32x32 patch of an axial T1-weighted MRI slice; tested on a different brain image.")


# --------------------------------------------------------------------------------------------
# builtin:modality
# --------------------------------------------------------------------------------------------

MODALITY = "builtin:modality"
MODALITY_CLASSES = ("CT", "MR", "XR", "US", "NM", "histology", "fundus")


@dataclass(frozen=True)
class Source:
    """One source image of ``builtin:modality``.

    Attributes:
        cls: class name (one of :data:`MODALITY_CLASSES`).
        kind: ``dicom`` (a pydicom / pydicom-data test file) or ``skimage`` (a ``skimage.data``
            function name).
        name: file name or function name.
        role: ``train`` (train + val crops), ``test`` (test crops only) or ``all`` (single source
            of its class: train / val / test crops from disjoint regions).
        scale: crop side as a fraction of the image's shorter side, drawn uniformly.
        note: what the image shows.
    """

    cls: str
    kind: str
    name: str
    role: str
    scale: tuple[float, float] = (0.35, 0.85)
    note: str = ""


MODALITY_SOURCES: tuple[Source, ...] = (
    Source("CT", "dicom", "693_UNCI.dcm", "train", note="head CT (CQ500), 512x512"),
    Source("CT", "dicom", "explicit_VR-UN.dcm", "train", note="abdominal CT (TCIA Pancreas-CT), 512x512"),
    Source("CT", "dicom", "J2K_pixelrep_mismatch.dcm", "test", note="head CT, 512x512, JPEG 2000"),
    Source("CT", "dicom", "CT_small.dcm", "test", note="thoracic CT (NEMA WG04 CT1), 128x128"),
    Source("MR", "dicom", "MR2_UNCI.dcm", "train", note="shoulder MR (NEMA WG04 MR2), 1024x1024"),
    Source("MR", "dicom", "emri_small.dcm", "train", note="head MR, 10 frames of 64x64"),
    Source("MR", "dicom", "MR-SIEMENS-DICOM-WithOverlays.dcm", "test", note="abdominal MR (GDCM), 484x484"),
    Source("MR", "dicom", "MR_small.dcm", "test", note="MR (NEMA WG04 MR1), 64x64"),
    Source("XR", "dicom", "RG1_UNCI.dcm", "train", note="chest radiograph, CR (NEMA WG04 RG1)"),
    Source("XR", "dicom", "RG3_UNCI.dcm", "test", note="lower-leg radiograph, CR (NEMA WG04 RG3)"),
    Source("US", "dicom", "examples_ybr_color.dcm", "train", note="cardiac US (SonoSite), 30 frames"),
    Source("US", "dicom", "gdcm-US-ALOKA-16.dcm", "train", note="pelvic US (Aloka, GDCM), palette colour"),
    Source("US", "dicom", "US1_UNCI.dcm", "test", note="lymph-node US (NEMA WG04 US1), RGB"),
    Source("US", "dicom", "color-pl.dcm", "test", note="transoesophageal echocardiogram, RGB"),
    Source("NM", "dicom", "JPEG2000_UNC.dcm", "all", note="whole-body bone scintigram (NEMA WG04 NM1)"),
    Source("histology", "skimage", "immunohistochemistry", "all",
           note="IHC-stained colonic glands (skimage.data, CMMI)"),
    Source("fundus", "skimage", "retina", "train", (0.03, 0.5),
           note="fundus photograph of a normal left eye (skimage.data, Wikimedia)"),
    Source("fundus", "skimage", "microaneurysms", "test",
           note="green-channel detail of fundus 07_dr (HRF database, skimage.data)"),
)

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _dicom_frames(name: str) -> np.ndarray:
    """Decode a pydicom test file to float32 frames ``(F, H, W)`` (not yet normalised)."""
    pydicom = _need("pydicom", MODALITY, "pydicom")
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    path = get_testdata_file(name, download=False)
    if path is None:
        raise FileNotFoundError(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array  # YBR is converted to RGB by pydicom
        pi = str(ds.PhotometricInterpretation)
        if pi == "PALETTE COLOR":
            arr = apply_color_lut(arr, ds)
    if arr.shape[-1] == 3 and int(ds.get("SamplesPerPixel", 1)) == 3 or pi == "PALETTE COLOR":
        a = arr.astype(np.float32) @ _LUMA  # grayscale: ITU-R 601 luma
    else:
        a = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
        if pi == "MONOCHROME1":
            a = a.max() - a
        if str(ds.get("Modality", "")) == "CT":
            a = np.clip(a, -1024.0, 3071.0)  # HU range; drops out-of-field padding values
    return a[None] if a.ndim == 2 else a


def _skimage_frames(name: str) -> np.ndarray:
    sk = _need("skimage.data", MODALITY, "scikit-image")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = getattr(sk, name)()  # only images bundled in the wheel; no pooch download
    a = a.astype(np.float32)
    if a.ndim == 3:
        a = a[..., :3] @ _LUMA
    return a[None]


def _load_source(src: Source) -> np.ndarray:
    """Frames ``(F, H, W)`` in 0–1: 0.5th–99.5th percentile of the whole source mapped to 0–1."""
    a = _dicom_frames(src.name) if src.kind == "dicom" else _skimage_frames(src.name)
    sub = a[:, ::4, ::4] if a.shape[1] * a.shape[2] > 250_000 else a
    lo, hi = np.percentile(sub, [0.5, 99.5])
    return np.clip((a - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0).astype(np.float32)


# Region = (frame indices or None for all, row range, col range) as fractions of the image.
Region = tuple[Any, tuple[float, float], tuple[float, float]]


def _regions(role: str, frames: int, h: int, w: int) -> dict[str, Region]:
    """Disjoint crop regions per split for a source of ``role``.

    ``test`` sources give all their pixels to test. ``train`` sources give val either their last
    frames (>= 4 frames; one frame gap) or the far 25 % of their longer axis (5 % gap). ``all``
    sources (the single source of a class) give train the first 58 % of the longer axis and split
    the rest across the shorter axis: val 0–48 %, test 52–100 %.
    """
    full = (0.0, 1.0)

    def along_long(a: tuple[float, float], b: tuple[float, float] = full) -> tuple:
        return (a, b) if h > w else (b, a)

    if role == "test":
        return {"test": (None, full, full)}
    if role == "train":
        if frames >= 4:
            n_val = max(1, int(round(frames * 0.2)))
            return {"train": (list(range(frames - n_val - 1)), full, full),
                    "val": (list(range(frames - n_val, frames)), full, full)}
        return {"train": (None, *along_long((0.0, 0.70))), "val": (None, *along_long((0.75, 1.0)))}
    return {"train": (None, *along_long((0.0, 0.58))),
            "val": (None, *along_long((0.62, 1.0), (0.0, 0.48))),
            "test": (None, *along_long((0.62, 1.0), (0.52, 1.0)))}


class _Cropper:
    """Random crops of one source, resized with antialiasing via a per-frame image pyramid."""

    def __init__(self, frames: np.ndarray, size: int) -> None:
        from PIL import Image

        self.Image = Image
        self.frames, self.size = frames, size
        self._pyr: dict[tuple[int, int], np.ndarray] = {}

    def level(self, f: int, lv: int) -> np.ndarray:
        if (f, lv) not in self._pyr:
            base = self.frames[f]
            if lv == 0:
                self._pyr[(f, lv)] = base
            else:
                h, w = base.shape
                im = self.Image.fromarray(np.ascontiguousarray(base, dtype=np.float32)).resize(
                    (max(1, w >> lv), max(1, h >> lv)), self.Image.BILINEAR)
                self._pyr[(f, lv)] = np.asarray(im, dtype=np.float32)
        return self._pyr[(f, lv)]

    def crop(self, f: int, top: int, left: int, side: int) -> np.ndarray:
        lv = 0
        while (side >> (lv + 1)) >= 2 * self.size:
            lv += 1
        img = self.level(f, lv)
        t, l_, s = top >> lv, left >> lv, max(1, side >> lv)
        c = img[t:t + s, l_:l_ + s]
        return np.asarray(self.Image.fromarray(np.ascontiguousarray(c, dtype=np.float32)).resize(
            (self.size, self.size), self.Image.BILINEAR), dtype=np.float32)


def _crops(frames: np.ndarray, region: Region, n: int, src: Source, size: int,
           rng: np.random.Generator) -> np.ndarray:
    """``n`` augmented uint8 crops ``(n, size, size)`` from ``region`` of ``frames``."""
    nf, h, w = frames.shape
    fidx, (r0, r1), (c0, c1) = region
    fidx = list(range(nf)) if fidx is None else fidx
    top0, top1 = int(round(r0 * h)), int(round(r1 * h))
    left0, left1 = int(round(c0 * w)), int(round(c1 * w))
    rh, rw = top1 - top0, left1 - left0
    cropper = _Cropper(frames, size)
    out = np.empty((n, size, size), dtype=np.uint8)
    for i in range(n):
        for attempt in range(100):
            f = int(fidx[rng.integers(len(fidx))])
            side = int(round(rng.uniform(*src.scale) * min(h, w)))
            side = int(np.clip(side, 8, min(rh, rw)))
            top = top0 + int(rng.integers(0, rh - side + 1))
            left = left0 + int(rng.integers(0, rw - side + 1))
            x = cropper.crop(f, top, left, side)
            # Skip crops that are nearly empty (black background, collimator shutters, etc.).
            if (x < 0.05).mean() <= 0.7 and x.std() >= 0.03:
                break
        if rng.random() < 0.5:
            x = x[:, ::-1]
        if rng.random() < 0.5:  # random display window: stretch the crop's 1st-99th percentile
            lo, hi = np.percentile(x, [1.0, 99.0])
            x = (x - lo) / max(float(hi - lo), 1e-3)
        gamma = float(np.exp(rng.uniform(-0.25, 0.25)))
        x = np.clip(x, 0.0, 1.0) ** gamma * rng.uniform(0.85, 1.15) + rng.uniform(-0.08, 0.08)
        x = x + rng.normal(0.0, rng.uniform(0.0, 0.02), x.shape)
        out[i] = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
    return out


def _split_counts(n: int, k: int) -> list[int]:
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def make_modality(seed: int = 0, *, size: int = 64, n_train: int = 400, n_val: int = 60,
                  n_test: int = 100) -> dict[str, np.ndarray]:
    """Generate ``builtin:modality`` (no caching; see :func:`load_modality`).

    Args:
        seed: seeds every crop position, size, frame, flip and intensity jitter.
        size: output side length (crops are resized to ``size x size``).
        n_train, n_val, n_test: crops per class and split, spread evenly over the class's sources
            for that split.

    Returns:
        ``{train,val,test}_x`` uint8 ``(N, 1, size, size)`` and ``{train,val,test}_y`` int64.

    Raises:
        DataError: a class has no decodable source image for some split.
    """
    rng = np.random.default_rng(seed)
    _need("PIL", MODALITY, "pillow")
    loaded: list[tuple[Source, np.ndarray]] = []
    failed: list[str] = []
    for src in MODALITY_SOURCES:
        try:
            loaded.append((src, _load_source(src)))
        except DataError:
            raise
        except Exception:  # missing file or pixel data needing an uninstalled codec: skip it
            failed.append(src.name)
    per_split = {"train": n_train, "val": n_val, "test": n_test}
    xs: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    ys: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for ci, cls in enumerate(MODALITY_CLASSES):
        mine = [(s, fr) for s, fr in loaded if s.cls == cls]
        for split in SPLITS:
            parts = [(s, fr, _regions(s.role, *fr.shape)[split]) for s, fr in mine
                     if split in _regions(s.role, *fr.shape)]
            if not parts:
                need = [s.name for s in MODALITY_SOURCES if s.cls == cls]
                pkg = "pydicom-data" if any(n.endswith(".dcm") for n in need) else "scikit-image"
                raise DataError(
                    f"{MODALITY}: no usable {split} image for class {cls} (tried {', '.join(need)}; "
                    f"unreadable: {', '.join(failed) or 'none'}); pip install {pkg} pillow")
            for (s, fr, region), n in zip(parts, _split_counts(per_split[split], len(parts))):
                xs[split].append(_crops(fr, region, n, s, size, rng))
                ys[split].append(np.full(n, ci, dtype=np.int64))
    out: dict[str, np.ndarray] = {}
    for split in SPLITS:
        out[f"{split}_x"] = np.concatenate(xs[split])[:, None]
        out[f"{split}_y"] = np.concatenate(ys[split])
    return out


_MODALITY_SOURCE = (
    "DICOM test files from pydicom and pydicom-data (NEMA WG04 samples, GDCM, TCIA, pydicom "
    "issues) and skimage.data immunohistochemistry / retina / microaneurysms; see "
    "transfuse.data.builtin.MODALITY_SOURCES and docs/DATASETS.md"
)
_MODALITY_LICENSE = (
    "pydicom and pydicom-data: MIT (test files from public sample sets, GDCM files BSD-3-Clause); "
    "scikit-image: BSD-3-Clause, immunohistochemistry 'no known copyright restrictions', retina "
    "CC0 1.0, microaneurysms CC0"
)


@register_dataset(MODALITY, description="imaging modality (CT/MR/XR/US/NM/histology/fundus), "
                  "64x64 grayscale crops of bundled DICOM and scikit-image images",
                  task="multiclass", classes=MODALITY_CLASSES, spatial_dims=2, image_size=64,
                  channels=1)
def load_modality(spec: DataSpec, arg: str = "") -> RawData:
    """Loader for ``builtin:modality`` (cached; generated from ``spec.split_seed``)."""
    params = {"size": 64, "n_train": 400, "n_val": 60, "n_test": 100,
              "sources": [f"{s.cls}:{s.name}:{s.role}:{s.scale}" for s in MODALITY_SOURCES]}
    arrays = cached_arrays(MODALITY, params, spec.split_seed,
                           lambda: make_modality(spec.split_seed, size=64, n_train=400,
                                                 n_val=60, n_test=100))
    origins = {s: f"{MODALITY} ({s} crops)" for s in SPLITS}
    return _raw(MODALITY, arrays, MODALITY_CLASSES, origins, _MODALITY_SOURCE, _MODALITY_LICENSE,
                "Imaging modality of a 64x64 grayscale crop (CT, MR, X-ray, ultrasound, nuclear "
                "medicine, histology, fundus); test crops come from different source images where "
                "a class has more than one (not NM, histology).")
