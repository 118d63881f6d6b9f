"""How good can a label-driven image prediction be? The image prior composed from the TRUE future
label, against copy-last, on the test patients' future cases.

The image head predicts the follow-up as a label-driven change of a base image
(``mtlgen.models.priors.class_mean_change``) plus a learned residual. This bench removes the
label error: it composes the change from the *true* target label, with the base either the
reference visit's image (copy-last) or the stable-tissue mean of the context visits
(``stable_tissue_mean``), at several point spreads (on the stable-tissue base also with the
blurred change kept to the voxels whose label changes), and scores every variant with the
evaluation's own changing-region image MAE (``mtlgen.evaluate.run.case_metrics``). What stays
is the part no label can explain: scan noise, the follow-up's own intensity drift, tissue moved
by mass effect and atrophy, and partial-volume edges.

Example: python bench/image_oracle.py --blur 0.5 0.75 1.0
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("-p", "--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--blur", type=float, nargs="+", default=[0.75], help="sigma, voxels")
    parser.add_argument("--group", default="test", choices=["train", "val", "test"])
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    from mtlgen.config import load_config
    from mtlgen.data.dataset import encode_context
    from mtlgen.data.series import load_visit
    from mtlgen.data.splits import load_split
    from mtlgen.evaluate.predictor import Prediction
    from mtlgen.evaluate.run import case_metrics, case_specs, case_truth
    from mtlgen.models.mtl_net import reference_image
    from mtlgen.models.priors import class_mean_change, stable_tissue_mean
    from mtlgen.registry.series import load_series

    params = load_config(args.params)
    split = load_split(params.data.split_file)
    chosen = set(getattr(split, args.group))
    series = [
        s
        for s in load_series(params.registry.url, params.registry.sqlite_timeout_s)
        if s.patient in chosen
    ]
    contrasts = list(params.data.contrasts)
    fallback = torch.full((3, len(contrasts)), 0.5)

    def onehot(label) -> torch.Tensor:
        return F.one_hot(torch.from_numpy(label.astype("int64")), 3).movedim(-1, 0)[None].float()

    scores: dict[str, list[float]] = {}
    for patient in series:
        for kind, context_idx, target_idx in case_specs(
            patient, params.data.max_context, params.data.reconstruction
        ):
            if kind != "future":
                continue
            context = [load_visit(patient.visits[i]) for i in context_idx]
            truth = case_truth(
                patient.patient,
                kind,
                context,
                load_visit(patient.visits[target_idx]),
                params.evaluate,
                params.progression,
            )
            if truth.change is None:
                continue
            batch = {
                k: v[None]
                for k, v in encode_context(
                    context, truth.target.days, contrasts, params.data.max_context
                ).items()
            }
            reference = reference_image(
                batch["images"], batch["contrast_present"], batch["ref_slot"]
            )
            known = (batch["mask_present"] & batch["visit_valid"]).float()
            probs = F.one_hot(batch["masks"], 3).movedim(-1, 2).float()
            probs = probs * known.reshape(*known.shape, 1, 1, 1, 1)
            stable = stable_tissue_mean(
                batch["images"],
                batch["contrast_present"],
                probs,
                probs[:, int(batch["ref_slot"][0])],
                batch["visit_valid"],
                reference,
            )
            ref_oh, true_oh = onehot(truth.reference.label), onehot(truth.target.label)
            relabelled = torch.from_numpy(truth.reference.label != truth.target.label)[None, None]
            variants = {"copy-last": reference, "stable-tissue mean": stable}
            for sigma in args.blur:
                s = torch.tensor(sigma)
                variants[f"true label on reference, blur {sigma}"] = class_mean_change(
                    reference, ref_oh, true_oh, fallback, s
                )
                changed = class_mean_change(stable, ref_oh, true_oh, fallback, s)
                variants[f"true label on stable-tissue mean, blur {sigma}"] = changed
                variants[f"  same, only relabelled voxels, blur {sigma}"] = torch.where(
                    relabelled, changed, stable
                )
            for name, image in variants.items():
                images = {c: image[0, i].numpy() for i, c in enumerate(contrasts)}
                pred = Prediction(images, truth.target.label, truth.volume_ml, "stable")
                scores.setdefault(name, []).append(case_metrics(pred, truth)["image_mae_change"])
    copy = statistics.fmean(scores["copy-last"])
    print(f"{len(scores['copy-last'])} future cases of the {args.group} patients")
    print(f"{'image':<45} {'MAE change':>10} {'/ copy-last':>11}")
    for name, values in scores.items():
        mean = statistics.fmean(values)
        print(f"{name:<45} {mean:>10.4f} {mean / copy:>11.3f}")


if __name__ == "__main__":
    main()
