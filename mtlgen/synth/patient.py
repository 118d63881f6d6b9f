"""One synthetic patient: anatomy variation, lesions with known volume laws, visits and poses.

Coordinates: *head space* is the template's world space (RAS mm) after the patient's own smooth
deformation. A visit's pose ``P`` maps head space to scanner world space,
``x = R (h - c) + c + t`` about the brain centre ``c``. Every visit is rendered on the same
axis-aligned scanner grid, so the head moves inside the field of view between visits, as in a
real follow-up. The visit-to-baseline transform is ``P_0 P_v^-1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from mtlgen.config import SynthConfig
from mtlgen.progression import DAYS_PER_YEAR, Status
from mtlgen.synth.anatomy import Anatomy, sample_volume
from mtlgen.synth.growth import GrowthLaw

CONTRASTS = ("T1w", "FLAIR")
LABEL_CORE, LABEL_EDEMA = 1, 2
# Tissue intensities of the FLAIR-like contrast (GM, WM, CSF) and of lesion core/edema per contrast.
_FLAIR_TISSUE = np.array([0.62, 0.42, 0.05], dtype=np.float32)
_LESION = {"T1w": (0.32, 0.52), "FLAIR": (0.95, 0.80)}
_MASS_EFFECT_SIGMA_MM = 18.0
_ATROPHY_SIGMA_MM = 16.0
_LESION_REACH_MM = 45.0  # lesion + edema stay well inside this radius
_LESION_SEPARATION_MM = 40.0  # centres of a patient's lesions at least this far apart
_GROWTH_LAWS = ("gompertz", "logistic", "exponential", "linear")


@dataclass
class SmoothField:
    """A smooth random field: Gaussian values on a coarse grid, interpolated trilinearly."""

    values: torch.Tensor  # [C, I, J, K]
    world_to_voxel: np.ndarray

    @classmethod
    def random(cls, rng, channels: int, box_min, box_max, spacing_mm: float) -> SmoothField:
        box_min, box_max = np.asarray(box_min, float), np.asarray(box_max, float)
        shape = np.ceil((box_max - box_min) / spacing_mm).astype(int) + 1
        values = rng.standard_normal((channels, *shape)).astype(np.float32)
        affine = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
        affine[:3, 3] = box_min
        return cls(torch.from_numpy(values), np.linalg.inv(affine))

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        return sample_volume(self.values, self.world_to_voxel, points)


@dataclass
class Visit:
    session: str
    day: int
    acq_time: datetime
    contrasts: tuple[str, ...]
    pose: np.ndarray  # 4x4, head -> scanner world
    intensity_scale: float
    intensity_offset: float
    bias_seed: int
    noise_seed: int


@dataclass
class Lesion:
    center: np.ndarray
    axes: np.ndarray  # per-axis scale of the ellipsoid
    rotation: np.ndarray  # 3x3
    roughness: SmoothField
    law: GrowthLaw


@dataclass
class RenderedVisit:
    images: dict[str, np.ndarray]
    label: np.ndarray
    brain_mask: np.ndarray
    core_voxels: int
    edema_voxels: int


@dataclass
class Appearance:
    """How one patient's scans look and are stored: FLAIR tissue intensities (GM, WM, CSF),
    lesion core/edema intensity per contrast, voxel order and storage type."""

    flair_tissue: np.ndarray
    lesion: dict[str, tuple[float, float]]
    orientation: str
    dtype: str


@dataclass
class PatientModel:
    participant_id: str
    cfg: SynthConfig
    anatomy: Anatomy
    deformation: SmoothField
    lesions: list[Lesion]
    visits: list[Visit]
    age: int
    sex: str
    appearance: Appearance
    _grid: tuple = field(default=None, repr=False)

    # ------------------------------------------------------------------ drawing
    @classmethod
    def draw(
        cls, participant_id: str, rng: np.random.Generator, cfg: SynthConfig, anatomy: Anatomy
    ):
        lo = anatomy.affine[:3, 3] - 20
        hi = lo + np.array(anatomy.shape) + 40
        deformation = SmoothField.random(rng, 3, lo, hi, spacing_mm=14.0)
        deformation.values *= cfg.deformation_mm

        lesions = [cls._draw_lesion(rng, cfg, anatomy, deformation, [])]
        visits = cls._draw_visits(rng, cfg, anatomy.brain_center)
        age, sex = int(rng.integers(25, 80)), str(rng.choice(["F", "M"]))
        # what the demo defaults leave fixed is drawn last, so the demo cohort stays as it was
        for _ in range(int(rng.integers(cfg.lesions[0], cfg.lesions[1] + 1)) - 1):
            lesions.append(cls._draw_lesion(rng, cfg, anatomy, deformation, lesions))
        return cls(
            participant_id=participant_id,
            cfg=cfg,
            anatomy=anatomy,
            deformation=deformation,
            lesions=lesions,
            visits=visits,
            age=age,
            sex=sex,
            appearance=cls._draw_appearance(rng, cfg),
        )

    @classmethod
    def _draw_lesion(
        cls,
        rng: np.random.Generator,
        cfg: SynthConfig,
        anatomy: Anatomy,
        deformation: SmoothField,
        others: list[Lesion],
    ) -> Lesion:
        """A lesion in deep white matter, at least ``_LESION_SEPARATION_MM`` from ``others`` (the
        last of 100 draws when none is that far)."""
        points = anatomy.deep_wm_points
        for _ in range(100):
            center = points[rng.integers(len(points))]
            # the template point sits at head position ~ center - displacement(center)
            center = center - deformation(torch.from_numpy(center[None])).numpy()[:, 0]
            if all(np.linalg.norm(center - o.center) >= _LESION_SEPARATION_MM for o in others):
                break
        law = cls._draw_law(rng, cfg)
        return Lesion(
            center=center.astype(np.float64),
            axes=rng.uniform(0.8, 1.25, size=3),
            rotation=Rotation.random(random_state=rng).as_matrix(),
            roughness=SmoothField.random(rng, 1, center - 40, center + 40, spacing_mm=6.0),
            law=law,
        )

    @staticmethod
    def _draw_appearance(rng: np.random.Generator, cfg: SynthConfig) -> Appearance:
        """Per-patient contrast (``contrast_jitter``), voxel order and storage type."""
        flair, lesion = _FLAIR_TISSUE.copy(), dict(_LESION)
        if cfg.contrast_jitter > 0:
            jitter = 1.0 + cfg.contrast_jitter * rng.standard_normal(3 + 2 * len(_LESION))
            flair = (flair * jitter[:3]).astype(np.float32)
            lesion = {
                name: (core * jitter[3 + 2 * i], edema * jitter[4 + 2 * i])
                for i, (name, (core, edema)) in enumerate(_LESION.items())
            }

        def pick(choice: str | list[str]) -> str:
            return choice if isinstance(choice, str) else str(rng.choice(choice))

        return Appearance(flair, lesion, pick(cfg.orientation), pick(cfg.dtype))

    @staticmethod
    def _draw_law(rng: np.random.Generator, cfg: SynthConfig) -> GrowthLaw:
        u = rng.uniform()
        course: Status = (
            "stable"
            if u < cfg.fraction_stable
            else "responding"
            if u < cfg.fraction_stable + cfg.fraction_responding
            else "progressive"
        )
        v0 = rng.uniform(*cfg.lesion_volume_ml)
        kwargs = {}
        if course == "responding":
            kwargs = dict(
                treatment_day=float(rng.uniform(60, 240)),
                shrink_rate=float(rng.uniform(*cfg.shrink_rate_per_year)),
            )
        rate = float(rng.uniform(*cfg.growth_rate_per_year))
        capacity = cfg.lesion_max_volume_ml
        if cfg.capacity_ml is not None:
            capacity = float(rng.uniform(*cfg.capacity_ml))
        law = cfg.growth_law
        if law == "mixed":
            law = str(rng.choice(_GROWTH_LAWS))
        return GrowthLaw(
            course=course,
            v0_ml=float(v0),
            carrying_capacity_ml=float(capacity),
            growth_rate=rate,
            law=law,
            **kwargs,
        )

    @staticmethod
    def _draw_visits(rng: np.random.Generator, cfg: SynthConfig, center: np.ndarray) -> list[Visit]:
        n = int(rng.integers(cfg.visits_min, cfg.visits_max + 1))
        gaps = rng.uniform(cfg.interval_days_min, cfg.interval_days_max, size=n - 1)
        days = np.concatenate([[0], np.cumsum(np.round(gaps))]).astype(int)
        baseline = datetime(2018, 1, 1, 8, 0) + timedelta(days=int(rng.integers(0, 1800)))
        visits = []
        for i, day in enumerate(days):
            contrasts = CONTRASTS
            if i > 0 and rng.uniform() < cfg.missing_contrast_prob:
                contrasts = (CONTRASTS[int(rng.integers(2))],)
            angle = np.deg2rad(cfg.max_rotation_deg) * rng.uniform()
            axis = rng.standard_normal(3)
            rot = Rotation.from_rotvec(axis / np.linalg.norm(axis) * angle).as_matrix()
            shift = rng.uniform(-cfg.max_translation_mm, cfg.max_translation_mm, size=3)
            pose = np.eye(4)
            pose[:3, :3] = rot
            pose[:3, 3] = center - rot @ center + shift
            minutes = int(rng.integers(0, 9 * 60))
            visits.append(
                Visit(
                    session=f"{i + 1:02d}",
                    day=int(day),
                    acq_time=baseline + timedelta(days=int(day), minutes=minutes),
                    contrasts=contrasts,
                    pose=pose,
                    intensity_scale=float(rng.uniform(0.8, 1.25)),
                    intensity_offset=float(rng.uniform(0.0, 0.05)),
                    bias_seed=int(rng.integers(2**31)),
                    noise_seed=int(rng.integers(2**31)),
                )
            )
        return visits

    # ---------------------------------------------------------------- geometry
    def grid(self) -> tuple[tuple[int, int, int], np.ndarray, torch.Tensor]:
        """Scanner grid shape, affine and its voxel centres in world mm [N, 3] (cached)."""
        if self._grid is None:
            shape, affine = self.anatomy.grid(self.cfg.voxel_mm)
            ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
            xyz = ijk.reshape(-1, 3).astype(np.float32) @ affine[:3, :3].T.astype(np.float32)
            self._grid = (shape, affine, torch.from_numpy(xyz + affine[:3, 3].astype(np.float32)))
        return self._grid

    def core_volume_ml(self, day: float) -> float:
        """The declared lesion-core volume at ``day``: the sum over the patient's lesions."""
        return sum(float(lesion.law.volume(day)) for lesion in self.lesions)

    @staticmethod
    def _radius_mm(lesion: Lesion, day: float) -> float:
        volume_mm3 = float(lesion.law.volume(day)) * 1000.0
        return (3.0 * volume_mm3 / (4.0 * np.pi)) ** (1.0 / 3.0)

    @staticmethod
    def _lesion_distance(lesion: Lesion, head: torch.Tensor) -> torch.Tensor:
        """Rough ellipsoidal distance from the lesion centre (unitless, monotone outward)."""
        rel = head - torch.as_tensor(lesion.center, dtype=head.dtype)
        rot = torch.as_tensor(lesion.rotation, dtype=head.dtype)
        local = rel @ rot / torch.as_tensor(lesion.axes, dtype=head.dtype)
        rough = 1.0 + 0.12 * lesion.roughness(head)[0]
        return local.norm(dim=1) * rough

    def _tissue_positions(self, head: torch.Tensor, day: float) -> torch.Tensor:
        """Pull-back of head points through mass effect, atrophy and the patient deformation."""
        pushed = head.clone()
        for lesion in self.lesions:
            strength = 0.5 * self._radius_mm(lesion, day) / _MASS_EFFECT_SIGMA_MM
            rel = head - torch.as_tensor(lesion.center, dtype=head.dtype)
            pushed -= (
                strength
                * rel
                * torch.exp(-(rel**2).sum(1, keepdim=True) / (2 * _MASS_EFFECT_SIGMA_MM**2))
            )
        widening = self.cfg.atrophy_per_year * 2.5 * day / DAYS_PER_YEAR
        for vc in self.anatomy.ventricle_centers:
            rel = head - torch.as_tensor(vc, dtype=head.dtype)
            gauss = torch.exp(-(rel**2).sum(1, keepdim=True) / (2 * _ATROPHY_SIGMA_MM**2))
            pushed -= widening * rel * gauss
        return pushed + self.deformation(pushed).T

    # --------------------------------------------------------------- rendering
    def render(
        self, visit: Visit, pose: np.ndarray | None = None, scanner: bool = True
    ) -> RenderedVisit:
        """Render ``visit``'s images and label map on the scanner grid.

        ``pose=np.eye(4)`` and ``scanner=False`` give the patient's anatomy without head motion or
        scanner effects (used to check that images are real anatomy).
        """
        shape, _, world = self.grid()
        pose = visit.pose if pose is None else pose
        inv = torch.as_tensor(np.linalg.inv(pose), dtype=world.dtype)
        head = world @ inv[:3, :3].T + inv[:3, 3]
        # only points that can hold tissue are sampled (brain box + room for deformations)
        lo, hi = (torch.as_tensor(b, dtype=world.dtype) for b in self.anatomy.brain_box)
        margin = 3 * self.cfg.deformation_mm + 12.0
        inside = ((head >= lo - margin) & (head <= hi + margin)).all(dim=1).nonzero()[:, 0]
        head = head[inside]
        t1, gm, wm, csf = self.anatomy.sample(self._tissue_positions(head, visit.day))
        brain = (gm + wm + csf) > 0.5
        label = self._label(head, visit.day, brain)
        flair = torch.as_tensor(self.appearance.flair_tissue) @ torch.stack([gm, wm, csf])

        images = {}
        for name, values in (("T1w", t1), ("FLAIR", flair)):
            if name not in visit.contrasts:
                continue
            core_val, edema_val = self.appearance.lesion[name]
            values[label == LABEL_CORE] = core_val
            values[label == LABEL_EDEMA] = edema_val
            arr = self._scatter(values, inside, shape)
            images[name] = self._scanner(arr, visit) if scanner else arr
        return RenderedVisit(
            images=images,
            label=self._scatter(label, inside, shape),
            brain_mask=self._scatter(brain, inside, shape),
            core_voxels=int((label == LABEL_CORE).sum()),
            edema_voxels=int((label == LABEL_EDEMA).sum()),
        )

    @staticmethod
    def _scatter(values: torch.Tensor, index: torch.Tensor, shape) -> np.ndarray:
        full = torch.zeros(int(np.prod(shape)), dtype=values.dtype)
        full[index] = values
        return full.view(shape).numpy()

    def _label(self, head: torch.Tensor, day: float, brain: torch.Tensor) -> torch.Tensor:
        """Per lesion, core = the N brain voxels nearest its centre, N = its law volume / voxel
        volume, and edema the next ones; every lesion's edema first, then every core."""
        voxel_ml = float(np.prod(self.cfg.voxel_mm)) / 1000.0
        label = torch.zeros(head.shape[0], dtype=torch.uint8)
        taken = torch.zeros(head.shape[0], dtype=torch.bool)  # a voxel is one lesion's core
        cores, edemas = [], []
        for lesion in self.lesions:
            n_core = round(float(lesion.law.volume(day)) / voxel_ml)
            n_total = round(n_core * self.cfg.edema_scale**3)
            center = torch.as_tensor(lesion.center, dtype=head.dtype)
            near = (brain & ((head - center).norm(dim=1) < _LESION_REACH_MM)).nonzero()[:, 0]
            order = near[torch.argsort(self._lesion_distance(lesion, head[near]), stable=True)]
            order = order[~taken[order]]
            taken[order[:n_core]] = True
            cores.append(order[:n_core])
            edemas.append(order[n_core:n_total])
        for edema in edemas:
            label[edema] = LABEL_EDEMA
        for core in cores:
            label[core] = LABEL_CORE
        return label

    def _scanner(self, image: np.ndarray, visit: Visit) -> np.ndarray:
        """Bias field, intensity scale/offset and Rician noise of one acquisition."""
        rng = np.random.default_rng(visit.bias_seed)
        coarse = torch.from_numpy(rng.standard_normal((1, 1, 4, 4, 4)).astype(np.float32))
        bias = torch.nn.functional.interpolate(coarse, size=image.shape, mode="trilinear")
        bias = np.exp(self.cfg.bias_strength * 0.5 * bias[0, 0].numpy())
        signal = visit.intensity_scale * bias * image + visit.intensity_offset * (image > 0)
        noise = np.random.default_rng(visit.noise_seed)
        sigma = self.cfg.noise_sigma
        real = signal + sigma * noise.standard_normal(image.shape, dtype=np.float32)
        imag = sigma * noise.standard_normal(image.shape, dtype=np.float32)
        return np.sqrt(real**2 + imag**2).astype(np.float32)
